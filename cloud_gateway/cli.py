"""`edgemart gateway run|token create`: thin verbs over the gateway library."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

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
