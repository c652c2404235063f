"""`edgemart gateway run|token create`: thin verbs over the gateway library."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_gateway.config import db_option, load_settings, mqtt_credentials
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.gateway import Gateway, run_gateway
from cloud_gateway.security.auth import create_token
from protocol.broker_url import add_credential_options

DB_HELP = (
    "the database: a SQLite file (default DATA_DIR/gateway.db; one worker) or"
    " postgresql://USER@HOST:PORT/DB (env EDGEMART_DB)"
)


def _run(args: argparse.Namespace) -> int:
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
        db=db_option(args.db),
        http_port=args.http_port,
        http_host=args.http_host,
        shared_group=args.shared_group,
        topic_root=args.topic_root,
    )
    asyncio.run(run_gateway(settings, on_ready=_announce))
    return 0


def _announce(gateway: Gateway) -> None:
    """One line on stdout once serving, so scripts using `--http-port 0` learn the port."""
    host = gateway.settings.http_host
    print(
        f"gateway ready on http://{host}:{gateway.http_port} trust={gateway.trust_path}", flush=True
    )


def _token_create(args: argparse.Namespace) -> int:
    settings = load_settings("command line", data_dir=args.data_dir, db=db_option(args.db))
    print(create_token(args.data_dir, db=settings.db))
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
    run.add_argument("--topic-root", default=None, help="default edgemart/v1")
    add_credential_options(run, "broker username (env EDGEMART_MQTT_USERNAME)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    run.set_defaults(func=_guard, verb=_run)

    token = verbs.add_parser("token", help="operator bearer tokens")
    token_verbs = token.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    create = token_verbs.add_parser("create", help="print a new bearer token")
    create.add_argument("--data-dir", required=True, type=Path)
    create.add_argument("--db", default=None, help=DB_HELP)
    create.set_defaults(func=_guard, verb=_token_create)


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
