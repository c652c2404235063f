"""The SQLite backend's schema as ordered, decorated, transactional, recorded migrations.

Each backend records its own migrations (table `migrations`: name, applied_at); these are
SQLite's (sqlite-utils, `json_each`, `WITHOUT ROWID`). A PostgreSQL backend keeps its own list.

Over 400 lines by nature: migrations are append-only history (a released one is never
edited, its name is recorded in databases), so this file only grows; split by age, the
order they run in would no longer be read in one place.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

from cloud_gateway.db.backend import Clock
from cloud_gateway.db.finite import clean_non_finite
from cloud_gateway.db.sqlite import transaction
from protocol.ids import format_time, utcnow

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next migration; it is applied once, in a transaction, by name."""
    MIGRATIONS.append(fn)
    return fn


def apply_migrations(db: Database, clock: Clock = utcnow) -> list[str]:
    """Apply the migrations not yet recorded in `migrations`; return the names applied now."""
    conn = db.conn
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    applied_now: list[str] = []
    for fn in MIGRATIONS:
        with transaction(conn):
            # Checked inside the write lock: another process may have applied it meanwhile.
            done = conn.execute("SELECT 1 FROM migrations WHERE name = ?", [fn.__name__]).fetchone()
            if done:
                continue
            fn(db)
            conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                [fn.__name__, format_time(clock())],
            )
        applied_now.append(fn.__name__)
    return applied_now


@migration
def m001_initial(db: Database) -> None:
    db.create_table(
        "devices",
        {
            "device_id": str,
            "profile": str,
            "status": str,
            "first_seen": str,
            "last_seen": str,
            "agent_version": str,
            "model_version": int,
            "last_seq": int,
            "stats": str,
            "cohorts": str,
            "malformed": int,
        },
        pk="device_id",
        not_null=["status", "malformed"],
        defaults={"status": "offline", "malformed": 0},
    )
    db.create_table(
        "batches",
        {
            "device_id": str,
            "seq": int,
            "received_at": str,
            "sent_at": str,
            "signals": int,
            "aggregates": int,
            "outcomes": int,
            "receipts": str,
        },
        pk=("device_id", "seq"),
    )
    db.create_table(
        "signals",
        {"device_id": str, "id": str, "seq": int, "kind": str, "at": str, "attrs": str},
        pk=("device_id", "id"),
    )
    db.create_table(
        "aggregates",
        {
            "device_id": str,
            "seq": int,
            "window": str,
            "key": str,
            "count": int,
            "seconds": float,
        },
        pk=("device_id", "seq", "window", "key"),
    )
    db.create_table(
        "outcomes",
        {
            "device_id": str,
            "id": str,
            "seq": int,
            "offer_id": str,
            "campaign_id": str,
            "variant": str,
            "kind": str,
            "at": str,
            "surface": str,
            "score": float,
            "model_version": int,
        },
        pk=("device_id", "id"),
    )
    db.execute("CREATE INDEX outcomes_by_campaign ON outcomes (campaign_id, kind)")
    db.create_table(
        "claims",
        {
            "device_id": str,
            "id": str,
            "offer_id": str,
            "campaign_id": str,
            "at": str,
            "received_at": str,
            "result": str,
        },
        pk=("device_id", "id"),
    )
    db.create_table(
        "campaigns",
        {
            "id": str,
            "name": str,
            "state": str,
            "doc": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null=["name", "state", "doc"],
    )
    db.create_table(
        "pushes",
        {
            "id": int,
            "campaign_id": str,
            "cohort": str,
            "bundle_id": str,
            "offers": int,
            "at": str,
        },
        pk="id",
    )
    db.execute("CREATE INDEX pushes_by_campaign ON pushes (campaign_id)")
    db.create_table(
        "catalogs",
        {
            "cohort": str,
            "bundle_id": str,
            "offers": int,
            "published_at": str,
            "expires_at": str,
        },
        pk="cohort",
    )
    db.create_table(
        "tokens",
        {"id": str, "hash": str, "created_at": str, "revoked_at": str},
        pk="id",
        not_null=["hash", "created_at"],
    )
    db.execute("CREATE UNIQUE INDEX tokens_by_hash ON tokens (hash)")
    db.create_table(
        "audit",
        {"id": int, "who": str, "action": str, "target": str, "at": str, "detail": str},
        pk="id",
        not_null=["who", "action", "at"],
    )


@migration
def issue6_claims_stock_device_pushes(db: Database) -> None:
    """Stock of limited offers, one grant per device per offer, device-addressed pushes."""
    db.execute(
        "CREATE TABLE offer_stock (campaign_id TEXT NOT NULL, offer_id TEXT NOT NULL,"
        " initial INTEGER NOT NULL, stock INTEGER NOT NULL CHECK (stock >= 0),"
        " PRIMARY KEY (campaign_id, offer_id))"
    )
    db.execute(
        "CREATE TABLE grants (campaign_id TEXT NOT NULL, offer_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, claim_id TEXT NOT NULL, code TEXT NOT NULL,"
        " at TEXT NOT NULL, PRIMARY KEY (campaign_id, offer_id, device_id))"
    )
    db.execute("ALTER TABLE claims ADD COLUMN granted INTEGER")
    db.execute("CREATE INDEX claims_by_offer ON claims (campaign_id, offer_id)")
    db.execute(
        "CREATE TABLE device_pushes (bundle_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
        " campaign_id TEXT NOT NULL, variant TEXT, holdout INTEGER NOT NULL DEFAULT 0,"
        " kind TEXT NOT NULL, offers INTEGER NOT NULL, payload TEXT NOT NULL,"
        " created_at TEXT NOT NULL, expires_at TEXT NOT NULL, sent_at TEXT,"
        " sends INTEGER NOT NULL DEFAULT 0, receipt_at TEXT,"
        " superseded INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE INDEX device_pushes_outstanding ON device_pushes (device_id, receipt_at)")
    db.execute("CREATE INDEX device_pushes_by_campaign ON device_pushes (campaign_id, kind)")
    db.execute("CREATE INDEX IF NOT EXISTS signals_by_kind ON signals (kind)")


@migration
def issue5_model_registry(db: Database) -> None:
    """Registered models, what each profile's retained manifest says, and logged features."""
    db.create_table(
        "models",
        {
            "version": int,
            "name": str,
            "sha256": str,
            "size": int,
            "profiles": str,
            "manifest": str,
            "registered_at": str,
            "registered_by": str,
        },
        pk="version",
        not_null=["name", "sha256", "size", "profiles", "manifest", "registered_at"],
    )
    db.create_table(
        "model_rollouts",
        {
            "profile": str,
            "version": int,
            "cohort": str,
            "percent": int,
            "manifest": str,
            "published_at": str,
        },
        pk="profile",
        not_null=["version", "cohort", "percent", "manifest", "published_at"],
    )
    db.create_table(
        "outcome_features",
        {"device_id": str, "id": str, "features": str},
        pk=("device_id", "id"),
        not_null=["features"],
    )


@migration
def issue3_aggregates_latest(db: Database) -> None:
    """Aggregates are cumulative snapshots: find a device's row per (window, key) fast."""
    db.execute("CREATE INDEX aggregates_latest ON aggregates (device_id, window, key)")


@migration
def models_rollout_health_and_halts(db: Database) -> None:
    """Issue 5: what devices report of a rollout (applied, failed, rolled back) and halts."""
    db.create_table(
        "model_health",
        {
            "version": int,
            "device_id": str,
            "status": str,
            "reason": str,
            "running": int,
            "at": str,
        },
        pk=("version", "device_id"),
        not_null=["status", "at"],
    )
    db.create_table(
        "model_halts",
        {
            "version": int,
            "halted_at": str,
            "reason": str,
            "replacement": int,
            "failures": int,
            "reporting": int,
        },
        pk="version",
        not_null=["halted_at", "reason", "failures", "reporting"],
    )


@migration
def models_outcome_counterfactual(db: Database) -> None:
    """Issue 5: a holdout device's counterfactual impression is stored as such (the training
    export skips it: nothing was shown, so no click could follow)."""
    db.execute("ALTER TABLE outcomes ADD COLUMN counterfactual INTEGER NOT NULL DEFAULT 0")


@migration
def issue3fix_outbox_id_dedupe(db: Database) -> None:
    """Batches are stored once per (device_id, outbox_id, seq): a device whose data dir was
    wiped starts a new outbox with `seq` from 1 again. Old rows (no outbox_id) keep `''`.
    Aggregate snapshots compete per outbox, so a new outbox's low seqs are not ignored."""
    db.execute(
        "CREATE TABLE batches_v2 (device_id TEXT, outbox_id TEXT NOT NULL DEFAULT '',"
        " seq INTEGER, received_at TEXT, sent_at TEXT, signals INTEGER, aggregates INTEGER,"
        " outcomes INTEGER, receipts TEXT, PRIMARY KEY (device_id, outbox_id, seq))"
    )
    db.execute(
        "INSERT INTO batches_v2 (device_id, outbox_id, seq, received_at, sent_at, signals,"
        " aggregates, outcomes, receipts) SELECT device_id, '', seq, received_at, sent_at,"
        " signals, aggregates, outcomes, receipts FROM batches"
    )
    db.execute("DROP TABLE batches")
    db.execute("ALTER TABLE batches_v2 RENAME TO batches")
    db.execute(
        "CREATE TABLE aggregates_v2 (device_id TEXT, outbox_id TEXT NOT NULL DEFAULT '',"
        " seq INTEGER, window TEXT, key TEXT, count INTEGER, seconds FLOAT,"
        " PRIMARY KEY (device_id, outbox_id, seq, window, key))"
    )
    db.execute(
        "INSERT INTO aggregates_v2 (device_id, outbox_id, seq, window, key, count, seconds)"
        " SELECT device_id, '', seq, window, key, count, seconds FROM aggregates"
    )
    db.execute("DROP TABLE aggregates")
    db.execute("ALTER TABLE aggregates_v2 RENAME TO aggregates")
    db.execute("CREATE INDEX aggregates_latest ON aggregates (device_id, outbox_id, window, key)")
    db.execute("ALTER TABLE devices ADD COLUMN outbox_id TEXT NOT NULL DEFAULT ''")


@migration
def issue6_pending_pushes_and_offer_ids(db: Database) -> None:
    """Pushes a campaign change owes, written in the change's own transaction (crash safety);
    offer ids, unique across campaigns (devices key offers by id alone)."""
    db.execute(
        "CREATE TABLE campaign_pending (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " campaign_id TEXT NOT NULL, kind TEXT NOT NULL, cohorts TEXT NOT NULL DEFAULT '[]',"
        " revokes TEXT NOT NULL DEFAULT '[]', created_at TEXT NOT NULL)"
    )
    db.execute("CREATE TABLE offer_ids (offer_id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL)")
    db.execute(
        "INSERT OR IGNORE INTO offer_ids (offer_id, campaign_id)"
        " SELECT json_extract(o.value, '$.id'), c.id FROM campaigns c,"
        " json_each(c.doc, '$.offers') o ORDER BY c.created_at"
    )


@migration
def erasure_device_commands(db: Database) -> None:
    """Signed commands to one device (`forget` after an erasure), re-sent until its receipt."""
    db.execute(
        "CREATE TABLE device_commands (id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
        " kind TEXT NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL,"
        " expires_at TEXT NOT NULL, sent_at TEXT, sends INTEGER NOT NULL DEFAULT 0,"
        " receipt_at TEXT, requested_by TEXT)"
    )
    db.execute(
        "CREATE INDEX device_commands_outstanding ON device_commands (device_id, receipt_at)"
    )


@migration
def aggregates_one_row_per_key(db: Database) -> None:
    """One row per (device, outbox, window, key), keyed by it (WITHOUT ROWID: one b-tree), so
    the latest snapshot is written by one upsert (it was a SELECT, a DELETE and an INSERT per
    aggregate). The store already kept one row per key; the highest seq is kept in any case."""
    db.execute(
        "CREATE TABLE aggregates_v3 (device_id TEXT NOT NULL, outbox_id TEXT NOT NULL DEFAULT '',"
        " seq INTEGER, window TEXT NOT NULL, key TEXT NOT NULL, count INTEGER, seconds FLOAT,"
        " PRIMARY KEY (device_id, outbox_id, window, key)) WITHOUT ROWID"
    )
    # SQLite takes the bare columns (count, seconds) from the row that has max(seq).
    db.execute(
        "INSERT INTO aggregates_v3 (device_id, outbox_id, seq, window, key, count, seconds)"
        " SELECT device_id, outbox_id, max(seq), window, key, count, seconds FROM aggregates"
        " WHERE device_id IS NOT NULL AND window IS NOT NULL AND key IS NOT NULL"
        " GROUP BY device_id, outbox_id, window, key"
    )
    db.execute("DROP TABLE aggregates")
    db.execute("ALTER TABLE aggregates_v3 RENAME TO aggregates")


@migration
def devices_state_at(db: Database) -> None:
    """The time of the device state stored (`db/ingest.py` `state_order`), so a
    state older than it, late or from another worker, does not overwrite it."""
    db.execute("ALTER TABLE devices ADD COLUMN state_at TEXT")


@migration
def received_day_for_retention(db: Database) -> None:
    """The day each raw signal, outcome and aggregate snapshot was received, what
    retention goes by (`db/retention.py`); rows stored before take their batch's day (else
    today, so they are kept a full period)."""
    for table, key in (("signals", "seq"), ("outcomes", "seq"), ("aggregates", "seq")):
        db.execute(f"ALTER TABLE {table} ADD COLUMN received_day TEXT")
        db.execute(
            f"UPDATE {table} SET received_day = coalesce((SELECT min(substr(b.received_at, 1, 10))"  # noqa: S608 - fixed names
            f" FROM batches b WHERE b.device_id = {table}.device_id AND b.seq = {table}.{key}),"
            " date('now'))"
        )
        if table != "signals":
            db.execute(f"CREATE INDEX {table}_by_received ON {table} (received_day)")
    # No index on signals.received_day: it cost ~6 % of SQLite ingest (an index write per
    # signal, measured side by side with bench ingest_bench). Signals are appended in the
    # order they arrive, so retention's `WHERE received_day < ? LIMIT ?` finds the old rows
    # at the start of the table and stops there.
    db.execute("CREATE INDEX batches_by_received ON batches (received_at)")


@migration
def workers_leases_and_registry(db: Database) -> None:
    """Workers: named leases (work that must happen once, claimed by one worker at a
    time) and the registry of live gateway workers (heartbeats). Times are epoch seconds."""
    db.execute(
        "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
        " expires_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE gateway_workers (id TEXT PRIMARY KEY, host TEXT NOT NULL,"
        " pid INTEGER NOT NULL, started_at REAL NOT NULL, last_seen REAL NOT NULL,"
        " http_port INTEGER, version TEXT NOT NULL, leases TEXT NOT NULL DEFAULT '[]')"
    )


@migration
def finite_numbers(db: Database) -> None:
    """Non-finite numbers older versions stored in a device's data (`NaN` in a signal's
    attrs, an infinite score) made null (`db/finite.py`): one device's data no longer fails
    targeting, launches or its export."""
    clean_non_finite(db.conn, "?", "9e999, -9e999")


@migration
def push_quarantine(db: Database) -> None:
    """A device push or command its loop cannot send (its payload unreadable, unencodable)
    is set aside with the reason (`quarantined`), kept for export, and skipped after."""
    for table in ("device_pushes", "device_commands"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN quarantined TEXT")


@migration
def token_scopes(db: Database) -> None:
    """Operator tokens with roles and a life: scopes (tokens made before keep `admin`, what
    they could do), an optional expiry, a name for people, and who revoked one."""
    db.execute("ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin'")
    db.execute("ALTER TABLE tokens ADD COLUMN expires_at TEXT")
    db.execute("ALTER TABLE tokens ADD COLUMN name TEXT")
    db.execute("ALTER TABLE tokens ADD COLUMN revoked_by TEXT")


@migration
def provisioning(db: Database) -> None:
    """Provisioning: factory claim credentials per production batch (their hash, size and
    use) and the certificate issued to each device (serial, for the CRL; revocation)."""
    db.execute(
        "CREATE TABLE claim_batches (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " size INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,"
        " revoked_at TEXT)"
    )
    db.execute(
        "CREATE TABLE device_certs (device_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL,"
        " serial TEXT NOT NULL, issued_at TEXT NOT NULL, revoked_at TEXT)"
    )
    # for brokers that cannot do mutual TLS: passwords the gateway makes (Mosquitto's hash)
    db.execute(
        "CREATE TABLE device_passwords (device_id TEXT PRIMARY KEY, hash TEXT NOT NULL,"
        " created_at TEXT NOT NULL)"
    )


@migration
def cloud_policy(db: Database) -> None:
    """Issue 18: the operators' policies (caps, quiet hours, holdout) per profile, cohort or
    campaign, the version counter of their signed documents, the policy version each device
    runs, and the per-campaign explanations devices report (one row per device and outcome,
    added to exactly once per stored batch)."""
    db.execute(
        "CREATE TABLE policies (scope TEXT NOT NULL, name TEXT NOT NULL, rules TEXT NOT NULL,"
        " updated_at TEXT NOT NULL, updated_by TEXT NOT NULL, PRIMARY KEY (scope, name))"
    )
    db.execute(
        "CREATE TABLE policy_versions (version INTEGER PRIMARY KEY, published_at TEXT NOT NULL,"
        " cohorts TEXT NOT NULL)"
    )
    db.execute("ALTER TABLE devices ADD COLUMN policy_version INTEGER")
    db.execute(
        "CREATE TABLE campaign_explanations (campaign_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " outcome TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (campaign_id, device_id,"
        " outcome)) WITHOUT ROWID"
    )


@migration
def key_state(db: Database) -> None:
    """The key ring's shared record (issue 14): the ring and its signed list with the highest
    serial any worker has seen, so every worker on the database switches keys with it."""
    db.execute(
        "CREATE TABLE key_state (name TEXT PRIMARY KEY, serial INTEGER NOT NULL,"
        " ring TEXT NOT NULL, key_list TEXT NOT NULL, updated_at TEXT NOT NULL,"
        " updated_by TEXT NOT NULL)"
    )


@migration
def households(db: Database) -> None:
    """Households on the LAN (issue 17): each household's secret (keys the devices' TXT hint
    and proof; handed to members beside their signed membership, never on the LAN) and the
    memberships the gateway signed (device key, roles, expiry)."""
    db.execute(
        "CREATE TABLE households (id TEXT PRIMARY KEY, secret TEXT NOT NULL,"
        " created_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE household_members (household_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " device_key TEXT NOT NULL, roles TEXT NOT NULL, issued_at TEXT NOT NULL,"
        " expires_at TEXT NOT NULL, PRIMARY KEY (household_id, device_id))"
    )


@migration
def household_invites(db: Database) -> None:
    """Household invites (issue 17): a one-time code the household's owner hands a new device
    (its companion app writes it beside the claim credential), redeemed at provisioning for a
    signed membership. Only the code's hash is kept; `used_by` marks it spent."""
    db.execute(
        "CREATE TABLE household_invites (code_hash TEXT PRIMARY KEY, household_id TEXT NOT NULL,"
        " roles TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,"
        " used_by TEXT, used_at TEXT)"
    )


@migration
def members_ledger(db: Database) -> None:
    """Issue 19: members (their balance, points earned and spent), the devices each owns,
    the append-only points ledger (one entry per source key, stored hashed), the source keys
    ever used (kept after an erasure, so a redelivered outcome never credits twice), the
    totals of erased members' entries (anonymous, per kind) and the points rule of each
    campaign."""
    db.execute(
        "CREATE TABLE members (id TEXT PRIMARY KEY, household_id TEXT,"
        " balance INTEGER NOT NULL DEFAULT 0, earned INTEGER NOT NULL DEFAULT 0,"
        " spent INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 1,"
        " created_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE member_devices (device_id TEXT PRIMARY KEY, member_id TEXT NOT NULL,"
        " linked_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX member_devices_member ON member_devices (member_id)")
    db.execute("CREATE TABLE member_sources (source TEXT PRIMARY KEY, at TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE member_ledger (id TEXT PRIMARY KEY, member_id TEXT NOT NULL,"
        " source TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, points INTEGER NOT NULL,"
        " campaign_id TEXT, at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX member_ledger_member ON member_ledger (member_id)")
    db.execute(
        "CREATE TABLE member_ledger_erased (kind TEXT PRIMARY KEY, entries INTEGER NOT NULL,"
        " points INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE member_rules (campaign_id TEXT PRIMARY KEY,"
        " per_conversion INTEGER NOT NULL, updated_at TEXT NOT NULL)"
    )


@migration
def model_experiments(db: Database) -> None:
    """Model experiments (issue 18): a candidate model against the control on a stable share
    of a cohort, what the operator stated up front (metric, alpha, minimum impressions, hours)
    and the decision (state, verdict, the arms' figures when it was taken)."""
    db.execute(
        "CREATE TABLE model_experiments (id TEXT PRIMARY KEY, control INTEGER NOT NULL,"
        " candidate INTEGER NOT NULL UNIQUE, cohort TEXT NOT NULL, share REAL NOT NULL,"
        " metric TEXT NOT NULL, min_impressions INTEGER NOT NULL, alpha REAL NOT NULL,"
        " max_hours REAL NOT NULL, mde REAL NOT NULL, state TEXT NOT NULL, verdict TEXT,"
        " started_at TEXT NOT NULL, started_by TEXT NOT NULL, decided_at TEXT, arms TEXT)"
    )


@migration
def live_waves(db: Database) -> None:
    """Issue 19: the waves of live-sale campaigns (each wave's time and its offers; their
    stock is in `offer_stock`) and the version of each cohort's sold-out notice."""
    db.execute(
        "CREATE TABLE live_waves (campaign_id TEXT NOT NULL, wave INTEGER NOT NULL,"
        " at TEXT NOT NULL, offers TEXT NOT NULL, PRIMARY KEY (campaign_id, wave))"
    )


@migration
def social_commerce(db: Database) -> None:
    """Group buys and price cuts (issue 19): groups and their seats (one open seat per
    household and offer, a partial unique index), cuts and their helps (one per household
    and cut), every help attempt audited, requests stored once with their signed answer,
    and the signed pushes owed to members (sent, then deleted; re-sent after a crash)."""
    db.execute(
        "CREATE TABLE social_groups (id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL,"
        " offer_id TEXT NOT NULL, code TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,"
        " seats INTEGER NOT NULL, price REAL NOT NULL, state TEXT NOT NULL,"
        " started_by TEXT NOT NULL, created_at TEXT NOT NULL, ends_at TEXT NOT NULL,"
        " closed_at TEXT)"
    )
    db.execute("CREATE INDEX social_groups_open ON social_groups (state, ends_at)")
    db.execute("CREATE INDEX social_groups_campaign ON social_groups (campaign_id, offer_id)")
    db.execute(
        "CREATE TABLE social_seats (group_id TEXT NOT NULL, household_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, campaign_id TEXT NOT NULL, offer_id TEXT NOT NULL,"
        " request_id TEXT NOT NULL, coupon TEXT, at TEXT NOT NULL, released_at TEXT,"
        " PRIMARY KEY (group_id, household_id))"
    )
    db.execute(
        "CREATE UNIQUE INDEX social_seats_household ON social_seats"
        " (campaign_id, offer_id, household_id) WHERE released_at IS NULL"
    )
    db.execute(
        "CREATE TABLE social_cuts (id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL,"
        " offer_id TEXT NOT NULL, code TEXT NOT NULL UNIQUE, household_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, price REAL NOT NULL, floor REAL NOT NULL,"
        " helps_needed INTEGER NOT NULL, helps INTEGER NOT NULL, reached REAL NOT NULL,"
        " state TEXT NOT NULL, coupon TEXT, created_at TEXT NOT NULL, ends_at TEXT NOT NULL,"
        " closed_at TEXT, UNIQUE (campaign_id, offer_id, household_id))"
    )
    db.execute("CREATE INDEX social_cuts_open ON social_cuts (state, ends_at)")
    db.execute(
        "CREATE TABLE social_helps (cut_id TEXT NOT NULL, household_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, request_id TEXT NOT NULL, at TEXT NOT NULL,"
        " price_after REAL NOT NULL, PRIMARY KEY (cut_id, household_id))"
    )
    db.execute(
        "CREATE TABLE social_help_log (id INTEGER PRIMARY KEY, cut_id TEXT,"
        " household_id TEXT NOT NULL, device_id TEXT NOT NULL, request_id TEXT NOT NULL,"
        " at TEXT NOT NULL, outcome TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX social_help_log_device ON social_help_log (device_id, at)")
    db.execute("CREATE INDEX social_help_log_household ON social_help_log (household_id, at)")
    db.execute(
        "CREATE TABLE social_requests (device_id TEXT NOT NULL, id TEXT NOT NULL,"
        " action TEXT NOT NULL, at TEXT NOT NULL, result TEXT,"
        " PRIMARY KEY (device_id, id))"
    )
    db.execute("CREATE INDEX social_requests_at ON social_requests (device_id, at)")
    db.execute(
        "CREATE TABLE social_pushes (id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
        " payload TEXT NOT NULL, at TEXT NOT NULL)"
    )
    # a device's household, looked up for every request (`db.social.household_of`)
    db.execute("CREATE INDEX household_members_device ON household_members (device_id)")


@migration
def experiment_stops(db: Database) -> None:
    """An operator's stop of a model experiment (`POST /v1/experiments/{id}/stop`): who, the
    outcome asked (`rollback` or `promote`) and why, kept beside the decision's arms."""
    for column in ("stopped_by", "stop_outcome", "stop_reason"):
        db.execute(f"ALTER TABLE model_experiments ADD COLUMN {column} TEXT")
