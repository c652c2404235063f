"""`edgemart gateway run|token create`: thin verbs over the gateway library."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_gateway.errors import ConfigError, GatewayError
from protocol.broker_url import add_credential_options, parse_broker_url

if TYPE_CHECKING:
    from cloud_gateway.runtime.gateway import Gateway

# The settings (pydantic) and the gateway itself are imported when a verb runs, so that
# `edgemart --help` stays light (tests/edgemart/test_cli.py).

DB_HELP = (
    "the database: a SQLite file (default DATA_DIR/gateway.db; one worker) or"
    " postgresql://USER@HOST:PORT/DB (env EDGEMART_DB)"
)


def _database(args: argparse.Namespace) -> str | None:
    """The `--db` option, else `EDGEMART_DB`; GatewayError naming which one holds a bad value."""
    from cloud_gateway.config import DB_ENV, db_option, sqlite_path  # noqa: PLC0415

    db = db_option(args.db)
    if db is not None:
        try:
            sqlite_path(db)
        except ValueError as exc:
            where = "--db" if args.db else DB_ENV
            raise ConfigError(str(exc), source=where, field="db") from None
    return db


def _run(args: argparse.Namespace) -> int:
    from cloud_gateway.config import load_settings, mqtt_credentials  # noqa: PLC0415
    from cloud_gateway.runtime.gateway import run_gateway  # noqa: PLC0415
    from daemonkit.ports import busy  # noqa: PLC0415

    verbose = args.verbose or 0
    logging.basicConfig(  # a no-op under `edgemart`, which configures logging itself
        level=logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    credentials = mqtt_credentials(args.mqtt_username, args.mqtt_password_file, args.mqtt_ca_file)
    settings = load_settings(
        "command line",
        **credentials,
        broker=args.broker,
        data_dir=args.data_dir,
        db=_database(args),
        http_port=args.http_port,
        http_host=args.http_host,
        shared_group=args.shared_group,
        topic_root=args.topic_root,
    )
    why = busy(settings.http_host, settings.http_port)
    if why is not None:  # before the keys, the database or the broker are touched
        print(f"edgemart gateway: --http-port {settings.http_port}: {why}", file=sys.stderr)
        return 2
    asyncio.run(run_gateway(settings, on_ready=_announce))
    return 0


def _announce(gateway: Gateway) -> None:
    """One line on stdout once serving, so scripts using `--http-port 0` learn the port."""
    s = gateway.settings
    link = "connected" if gateway.link_connected else "connecting"
    broker = parse_broker_url(s.broker).redacted()  # never a password given in the URL
    print(
        f"gateway ready on http://{s.http_host}:{gateway.http_port} trust={gateway.trust_path}"
        f" broker {broker} ({link}), topic root {s.topic_root}",
        flush=True,
    )


def _token_db(args: argparse.Namespace) -> tuple[bool, str | None]:
    """(a gateway is there, its --db); says on stderr when there is none."""
    from cloud_gateway.config import load_settings  # noqa: PLC0415

    settings = load_settings("command line", data_dir=args.data_dir, db=_database(args))
    if settings.db_url is None and not settings.db_path.exists():
        # a SQLite gateway's first start makes its database: none there, no gateway there
        flag = f"--data-dir {args.data_dir}" if settings.db is None else f"--db {settings.db}"
        print(
            f"edgemart gateway: {flag}: no gateway there (no database {settings.db_path}); give"
            " the --data-dir (or --db) of `edgemart gateway run`",
            file=sys.stderr,
        )
        return False, None
    return True, settings.db


def _duration(text: str) -> timedelta:
    """`90m`, `12h`, `30d`: a token's life."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90m, 12h or 30d")
    return timedelta(**{units[unit]: int(number)})


def _token_create(args: argparse.Namespace) -> int:
    from cloud_gateway.security.auth import create_token  # noqa: PLC0415

    there, db = _token_db(args)
    if not there:
        return 2
    print(
        create_token(
            args.data_dir, db=db, scopes=args.scopes, expires_in=args.expires_in, name=args.name
        )
    )
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from cloud_gateway.security.auth import revoke_token  # noqa: PLC0415

    there, db = _token_db(args)
    if not there:
        return 2
    if not revoke_token(args.data_dir, args.token, db=db):
        print(f"edgemart gateway: no live token {args.token!r}", file=sys.stderr)
        return 1
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from cloud_gateway.security.auth import list_tokens  # noqa: PLC0415

    there, db = _token_db(args)
    if not there:
        return 2
    for row in list_tokens(args.data_dir, db=db):
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
        expires = row["expires_at"] or "never"
        print(f"{row['id']}\t{row['scopes']}\texpires {expires}\t{state}\t{row['name'] or ''}")
    return 0


def _in_store(args: argparse.Namespace, work: Any) -> Any:
    """`work(store)` on the gateway's database (blocking), or None when there is none."""
    from cloud_gateway.db.open import open_session  # noqa: PLC0415

    there, db = _token_db(args)
    if not there:
        return None
    store = open_session(args.data_dir, db)
    try:
        return work(store)
    finally:
        store.close()


def _provision_claim(args: argparse.Namespace) -> int:
    from cloud_gateway.provisioning.service import create_batch  # noqa: PLC0415
    from cloud_gateway.security.auth import operator  # noqa: PLC0415

    claim = _in_store(args, lambda s: create_batch(s, args.batch, args.size, operator()))
    if claim is None:
        return 2
    print(claim)
    return 0


def _provision_revoke(args: argparse.Namespace) -> int:
    from cloud_gateway.provisioning.service import revoke  # noqa: PLC0415
    from cloud_gateway.security.auth import operator  # noqa: PLC0415

    there, _ = _token_db(args)
    if not there:
        return 2
    crl = _in_store(args, lambda s: revoke(s, args.data_dir, args.device, operator()))
    if crl is None:
        print(f"edgemart gateway: no live certificate for {args.device!r}", file=sys.stderr)
        return 1
    return _hand_to_broker(args, crl)


def _hand_to_broker(args: argparse.Namespace, crl: Path | None) -> int:
    """`--crl-out` and `--broker-pid-file`: the running broker takes the change now."""
    from cloud_gateway.errors import GatewayError  # noqa: PLC0415
    from cloud_gateway.provisioning.broker import install_crl, reload_broker  # noqa: PLC0415

    try:
        if crl is not None and args.crl_out is not None:
            crl = install_crl(crl, args.crl_out)
        if args.broker_pid_file is None:
            print(f"revoked; reload the broker (SIGHUP) to read {crl or 'its password file'}")
            return 0
        pid = reload_broker(args.broker_pid_file)
    except GatewayError as exc:
        print(f"edgemart gateway: revoked, but {exc}", file=sys.stderr)
        return 1
    print(f"revoked; broker {pid} reloaded (SIGHUP): refused at its next connect")
    return 0


def _provision_claim_revoke(args: argparse.Namespace) -> int:
    from cloud_gateway.db.provisioning import revoke_batch  # noqa: PLC0415
    from cloud_gateway.security.auth import operator  # noqa: PLC0415

    done = _in_store(args, lambda s: revoke_batch(s, args.batch, operator()))
    if not done:
        print(f"edgemart gateway: no live claim for batch {args.batch!r}", file=sys.stderr)
        return 1
    return 0


def _provision_password(args: argparse.Namespace) -> int:
    from cloud_gateway.provisioning.service import issue_password, revoke_password  # noqa: PLC0415
    from cloud_gateway.security.auth import operator  # noqa: PLC0415

    if args.revoke:
        done = _in_store(
            args, lambda s: revoke_password(s, args.device, args.password_file, operator())
        )
        if not done:
            print(f"edgemart gateway: no broker password for {args.device!r}", file=sys.stderr)
            return 1
        return _hand_to_broker(args, None)
    password = _in_store(
        args, lambda s: issue_password(s, args.device, args.password_file, operator())
    )
    if password is None:
        return 2
    print(password)  # alone on stdout: scripts take it with $(...)
    if args.broker_pid_file is not None:
        from cloud_gateway.errors import GatewayError  # noqa: PLC0415
        from cloud_gateway.provisioning.broker import reload_broker  # noqa: PLC0415

        try:
            pid = reload_broker(args.broker_pid_file)
        except GatewayError as exc:
            print(f"edgemart gateway: password set, but {exc}", file=sys.stderr)
            return 1
        print(f"broker {pid} reloaded (SIGHUP)", file=sys.stderr)
    return 0


def _provision_broker_cert(args: argparse.Namespace) -> int:
    from cloud_gateway.provisioning.ca import load_or_create  # noqa: PLC0415

    ca = load_or_create(args.data_dir)
    cert, key = ca.issue_server(args.host)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server.pem").write_bytes(cert)
    key_path = args.out / "server.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)
    (args.out / "ca.pem").write_text(ca.cert_pem)
    print(f"{args.out}/server.pem, server.key, ca.pem; the CRL: {ca.crl_path}")
    return 0


def _guard(func: argparse.Namespace) -> int:
    """Run a verb: library errors become one line on stderr and exit code 2."""
    try:
        code: int = func.verb(func)
    except GatewayError as exc:
        print(f"edgemart gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def add_verbs(parser: argparse.ArgumentParser) -> None:
    """The gateway verbs on `parser` (the `gateway` group of `edgemart`, or our own `main`)."""
    verbs = parser.add_subparsers(dest="gateway_verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run the gateway until SIGTERM")
    run.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    run.add_argument("--data-dir", required=True, type=Path, help="keys, trust.json, database")
    run.add_argument("--db", default=None, help=DB_HELP)
    run.add_argument("--http-port", required=True, type=int, help="0 picks a free port")
    run.add_argument("--http-host", default=None, help="default 127.0.0.1")
    run.add_argument("--shared-group", default=None, help="consume as $share/GROUP/...")
    run.add_argument("--topic-root", default=None, help="MQTT topic root (default edgemart/v1)")
    add_credential_options(run, "broker username (env EDGEMART_MQTT_USERNAME)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    run.set_defaults(func=_guard, verb=_run)

    token = verbs.add_parser("token", help="operator bearer tokens")
    token_verbs = token.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    create = token_verbs.add_parser("create", help="print a new bearer token")
    create.add_argument("--data-dir", required=True, type=Path)
    create.add_argument("--db", default=None, help=DB_HELP)
    create.add_argument(
        "--scopes",
        default="admin",
        help="comma-separated: read-only, campaigns, models, devices, admin (default admin)",
    )
    create.add_argument(
        "--expires-in", type=_duration, default=None, help="a life like 90m, 12h, 30d"
    )
    create.add_argument("--name", default=None, help="who or what uses it (shown in list)")
    create.set_defaults(func=_guard, verb=_token_create)
    revoke = token_verbs.add_parser("revoke", help="revoke a token (its id or itself)")
    revoke.add_argument("token", help="the token's id (from `token list`) or the token")
    revoke.add_argument("--data-dir", required=True, type=Path)
    revoke.add_argument("--db", default=None, help=DB_HELP)
    revoke.set_defaults(func=_guard, verb=_token_revoke)
    listing = token_verbs.add_parser("list", help="every token: id, scopes, life (no secret)")
    listing.add_argument("--data-dir", required=True, type=Path)
    listing.add_argument("--db", default=None, help=DB_HELP)
    listing.set_defaults(func=_guard, verb=_token_list)
    _add_provision_verbs(verbs)


def _add_provision_verbs(verbs: Any) -> None:
    prov = verbs.add_parser("provision", help="device identities: claims, certificates, CRL")
    pverbs = prov.add_subparsers(dest="provision_verb", required=True, metavar="VERB")
    claim = pverbs.add_parser("claim", help="print a claim credential for a production batch")
    claim.add_argument("--batch", required=True, help="the batch's id")
    claim.add_argument("--size", required=True, type=int, help="how many devices it may make")
    claim.set_defaults(func=_guard, verb=_provision_claim)
    revoke = pverbs.add_parser("revoke", help="revoke a device's certificate (rewrites the CRL)")
    revoke.add_argument("--device", required=True)
    revoke.add_argument("--crl-out", type=Path, help="copy the CRL here (the broker's crlfile)")
    revoke.set_defaults(func=_guard, verb=_provision_revoke)
    unclaim = pverbs.add_parser("revoke-claim", help="revoke a batch's claim credential")
    unclaim.add_argument("--batch", required=True)
    unclaim.set_defaults(func=_guard, verb=_provision_claim_revoke)
    password = pverbs.add_parser(
        "password", help="a broker password for a device (brokers without mutual TLS)"
    )
    password.add_argument("--device", required=True)
    password.add_argument(
        "--password-file", required=True, type=Path, help="the broker's password_file"
    )
    password.add_argument("--revoke", action="store_true", help="remove the device's password")
    password.set_defaults(crl_out=None)
    password.set_defaults(func=_guard, verb=_provision_password)
    broker = pverbs.add_parser("broker-cert", help="a server certificate for the broker")
    broker.add_argument("--host", required=True, help="the name or IP devices dial")
    broker.add_argument("--out", required=True, type=Path)
    broker.set_defaults(func=_guard, verb=_provision_broker_cert)
    for sub in (revoke, password):
        sub.add_argument(
            "--broker-pid-file",
            type=Path,
            help="SIGHUP this Mosquitto (its pid_file) so it reads the change now",
        )
    for sub in (claim, revoke, unclaim, password, broker):
        sub.add_argument("--data-dir", required=True, type=Path)
        sub.add_argument("--db", default=None, help=DB_HELP)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gateway` to `edgemart`'s commands; the caller then runs `args.func(args)`."""
    add_verbs(subparsers.add_parser("gateway", help="the cloud gateway"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgemart gateway")
    add_verbs(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
