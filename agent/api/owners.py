"""Who may call the local API: app tokens with scopes, kept hashed under `DATA_DIR/tokens/`.

`DATA_DIR/tokens/admin.token` (mode 0600, written on the agent's first start) holds an
all-scopes token: that path is part of the contract (device integrators and test tools read
it). `DATA_DIR/tokens/apps.json` (mode 0600) holds, per app, the sha256 of its token and its
scopes; `edgemart agent token create|revoke` edits it, also while the agent runs (the agent
reads it again when it changed). Plain blocking file I/O: call it from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from daemonkit.files import write_durable
from protocol.ids import format_time, utcnow

SCOPES = ("signals", "offers", "outcomes", "claims", "consent", "status")
"""signals: POST /v1/signals; offers: GET /v1/offers; outcomes: POST /v1/outcomes; claims:
/v1/claims; consent: PUT /v1/consent (changing consent, erasing); status: /v1/status,
/v1/quarantine, /metrics. Any valid token reads GET /v1/consent."""
ADMIN_APP = "admin"
TOKENS_DIR = "tokens"
ADMIN_FILE = "admin.token"
APPS_FILE = "apps.json"
AUDIT_FILE = "audit.jsonl"
"""One JSON line per token change: when, who (the login that ran the command), what, which app."""
MAX_AUDIT_BYTES = 1 << 20
"""Flash is finite: past this the log keeps its newer half."""
TOKEN_PREFIX = "emt_"  # noqa: S105 - a prefix naming the kind of token, not a secret
MAX_TOKEN_LEN = 256
_APP_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class TokenError(AgentError):
    """An app token request that cannot be done (unknown scope, bad app name, damaged file)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The app a valid token belongs to, and what it may do."""

    app: str
    scopes: frozenset[str]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_dir(data_dir: Path) -> Path:
    return data_dir / TOKENS_DIR


def admin_token_path(data_dir: Path) -> Path:
    """`DATA_DIR/tokens/admin.token`: the contract path of the all-scopes token."""
    return tokens_dir(data_dir) / ADMIN_FILE


def read_admin_token(data_dir: Path) -> str:
    """The all-scopes token the agent wrote on its first start (blocking)."""
    return admin_token_path(data_dir).read_text(encoding="ascii").strip()


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """`signals,offers` (or a list) -> scopes; an unknown one is a `TokenError` naming it."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    scopes = frozenset(s for s in items if s)
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise TokenError(f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    if not scopes:
        raise TokenError(f"no scope given (known: {', '.join(SCOPES)})")
    return scopes


def _check_app(app: str) -> None:
    if not _APP_RE.fullmatch(app):
        raise TokenError(f"app name {app!r} must be 1-64 of a-z 0-9 _ . - (starting a-z 0-9)")


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(raw)
        apps = doc["apps"]
        if not isinstance(apps, dict):
            raise TypeError("apps is not an object")  # noqa: TRY301 - one message for all
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError(f"{path}: not an app token file ({exc})") from exc
    return apps


def _save(path: Path, apps: dict[str, Any]) -> None:
    body = json.dumps({"v": 1, "apps": apps}, indent=1, sort_keys=True).encode()
    write_durable(path, body + b"\n", mode=0o600)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[Path]:
    """The apps file, under an exclusive lock (two CLIs at once do not lose an app)."""
    folder = tokens_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder / APPS_FILE
    finally:
        os.close(fd)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (OSError, KeyError):
        return "cli"


def _audit(folder: Path, action: str, app: str, who: str, **detail: Any) -> None:
    """Append one line to `DATA_DIR/tokens/audit.jsonl` (under the lock), bounded in size."""
    path = folder / AUDIT_FILE
    line = json.dumps(
        {"at": format_time(utcnow()), "who": who, "action": action, "app": app, **detail},
        sort_keys=True,
    )
    old = path.read_bytes() if path.exists() else b""
    if len(old) > MAX_AUDIT_BYTES:
        old = old[len(old) // 2 :].split(b"\n", 1)[-1]
    write_durable(path, old + line.encode() + b"\n", mode=0o600)


def audit_log(data_dir: Path) -> list[dict[str, Any]]:
    """The token changes recorded on this device, oldest first."""
    path = tokens_dir(data_dir) / AUDIT_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _entry(token: str, scopes: Iterable[str]) -> dict[str, Any]:
    return {
        "sha256": token_hash(token),
        "scopes": sorted(scopes),
        "created_at": format_time(utcnow()),
    }


def create_token(data_dir: Path, app: str, scopes: str | Iterable[str]) -> str:
    """A new token for `app` with `scopes` (replacing the app's previous one); printed once."""
    _check_app(app)
    if app == ADMIN_APP:
        raise TokenError(f"{ADMIN_APP!r} is the agent's own all-scopes token ({ADMIN_FILE})")
    wanted = parse_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _locked(data_dir) as path:
        apps = _load(path)
        replaced = app in apps
        apps[app] = _entry(token, wanted)
        _save(path, apps)
        action = "token.replace" if replaced else "token.create"
        _audit(path.parent, action, app, _who(), scopes=sorted(wanted))
    return token


def revoke_token(data_dir: Path, app: str) -> bool:
    """Remove `app`'s token; False when it had none. A running agent refuses it within 1 s."""
    with _locked(data_dir) as path:
        apps = _load(path)
        if apps.pop(app, None) is None:
            return False
        _save(path, apps)
        _audit(path.parent, "token.revoke", app, _who())
    return True


def list_apps(data_dir: Path) -> dict[str, list[str]]:
    """App name -> its scopes."""
    return {
        app: list(e.get("scopes", [])) for app, e in _load(tokens_dir(data_dir) / APPS_FILE).items()
    }


def ensure_admin(data_dir: Path) -> Path:
    """On start: write `admin.token` (0600) unless it exists, and keep its hash in the apps file
    with every scope. Delete the file and restart the agent to replace the token."""
    path = admin_token_path(data_dir)
    with _locked(data_dir) as apps_path:
        if path.exists():
            token = path.read_text(encoding="ascii").strip()
        else:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            write_durable(path, token.encode("ascii") + b"\n", mode=0o600)
        apps = _load(apps_path)
        known = apps.get(ADMIN_APP)
        if known is None or known.get("sha256") != token_hash(token):
            apps[ADMIN_APP] = _entry(token, SCOPES)
            _save(apps_path, apps)
            _audit(apps_path.parent, "token.create", ADMIN_APP, "agent", scopes=list(SCOPES))
    return path


def bind_uid(data_dir: Path, app: str, uid: int) -> None:
    """Callers on the local API's Unix socket running as `uid` act as `app`, with its scopes
    (peer credentials, no token); the app must have a token entry (`create_token`)."""
    if not 0 < uid < 2**32 - 1:
        raise TokenError(f"uid {uid} is not a user id (root is admin already)")
    with _locked(data_dir) as path:
        apps = _load(path)
        entry = apps.get(app)
        if entry is None or app == ADMIN_APP:
            raise TokenError(f"no app {app!r}: `edgemart agent token create --app {app}` first")
        for other in apps.values():
            if uid in other.get("uids", []):
                other["uids"] = [u for u in other["uids"] if u != uid]
        entry["uids"] = sorted({*entry.get("uids", []), uid})
        _save(path, apps)
        _audit(path.parent, "token.bind_uid", app, _who(), uid=uid)


def unbind_uid(data_dir: Path, uid: int) -> bool:
    """`uid` no longer acts as any app on the socket; False when it was bound to none."""
    with _locked(data_dir) as path:
        apps = _load(path)
        for app, entry in apps.items():
            if uid in entry.get("uids", []):
                entry["uids"] = [u for u in entry["uids"] if u != uid]
                _save(path, apps)
                _audit(path.parent, "token.unbind_uid", app, _who(), uid=uid)
                return True
    return False


class Owners:
    """The tokens a running agent accepts: read from the apps file, again when it changed;
    and the apps of the user ids bound to them (callers on the Unix socket)."""

    RECHECK_S = 1.0
    """How often a request looks whether the file changed (revocations apply within this)."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = tokens_dir(data_dir) / APPS_FILE
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._by_hash: dict[str, Owner] = {}
        self._by_uid: dict[int, Owner] = {}

    def due(self) -> bool:
        """True when the file should be looked at again before answering (blocking I/O due)."""
        return self._clock() - self._checked >= self.RECHECK_S

    def refresh(self) -> None:
        """Read the apps file again if it changed (blocking: from a thread)."""
        self._checked = self._clock()
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._stamp, self._by_hash, self._by_uid = None, {}, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        apps = _load(self._path)
        by_hash: dict[str, Owner] = {}
        by_uid: dict[int, Owner] = {}
        for app, entry in apps.items():
            if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                scopes = frozenset(s for s in entry.get("scopes", []) if s in SCOPES)
                by_hash[entry["sha256"]] = Owner(str(app), scopes)
                uids = entry.get("uids", [])
                for uid in uids if isinstance(uids, list) else []:
                    if isinstance(uid, int):
                        by_uid[uid] = Owner(str(app), scopes)
        self._by_hash, self._by_uid, self._stamp = by_hash, by_uid, stamp

    def owner(self, token: str) -> Owner | None:
        """The app of `token`, or None for an unknown one (no I/O)."""
        if not token or len(token) > MAX_TOKEN_LEN:
            return None
        return self._by_hash.get(token_hash(token))

    def peer(self, uid: int) -> Owner | None:
        """The app of a Unix-socket caller running as `uid` (no I/O): root and the agent's
        own user are the admin (they can read `admin.token` anyway); others only if bound."""
        if uid in {0, os.getuid()}:
            return Owner(ADMIN_APP, frozenset(SCOPES))
        return self._by_uid.get(uid)


def admin_headers(data_dir: Path) -> dict[str, str]:
    """`Authorization: Bearer <admin token>` for tools on the device (blocking: reads the file)."""
    return {"Authorization": f"Bearer {read_admin_token(data_dir)}"}
