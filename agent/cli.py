"""`edgemart agent run`: the agent daemon's command line (thin over `run_agent`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from protocol.broker_url import add_credential_options

if TYPE_CHECKING:
    from agent.runtime.agent import Agent

# `agent.config` (pydantic) and the daemon are imported when `run` runs: `edgemart --help`
# stays light (tests/edgemart/test_cli.py).

PROFILE_PORT = -2
"""`--api-port` not given: serve on the profile's `api_port`."""


def _port(text: str) -> int | None:
    """`--api-port`: a port, 0 for a free one, `none` for no local API."""
    if text.lower() in ("none", "off", "-1"):
        return None
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range")
    return value


def _add_verbs(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="run the agent daemon until SIGTERM/SIGINT")
    run.add_argument("--profile", required=True, help="firmware profile name or .toml path")
    run.add_argument("--device-id", required=True)
    run.add_argument(
        "--broker",
        default=None,
        help="mqtt://HOST:PORT or mqtts://HOST:PORT, or a comma-separated list of a cluster's"
        " nodes, tried in order from the last that worked (env EDGEMART_BROKER)",
    )
    run.add_argument("--data-dir", required=True, type=Path)
    run.add_argument(
        "--api-port",
        type=_port,
        default=PROFILE_PORT,
        help="local API port on 127.0.0.1 (0: a free port, none: no API; default: the profile's)",
    )
    run.add_argument(
        "--api-socket",
        type=Path,
        default=None,
        help="also serve the local API on this Unix socket (0660; callers known by their uid)",
    )
    run.add_argument("--api-socket-group", default=None, help="the socket's group (name or gid)")
    run.add_argument("--trust", required=True, type=Path, help="the pinned trust.json")
    run.add_argument("--config", type=Path, default=None, help="a TOML config file")
    run.add_argument(
        "--topic-root",
        default=None,
        help="MQTT topic root (default: the trust file's, else edgemart/v1)",
    )
    add_credential_options(
        run, "broker username (env EDGEMART_MQTT_USERNAME; default: the device id)"
    )
    run.add_argument(
        "--claim",
        type=Path,
        default=None,
        help="the factory claim credential: on first start, get this device's certificate",
    )
    run.add_argument(
        "--provision-url", default=None, help="the gateway's URL that provisions devices"
    )
    run.add_argument(
        "--household-invite",
        type=Path,
        default=None,
        help="a one-time household invite: redeemed at provisioning for a membership",
    )
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.set_defaults(func=cmd_run)
    token = verbs.add_parser("token", help="the local API's app tokens")
    token_verbs = token.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    create = token_verbs.add_parser("create", help="print a new token for an app")
    create.add_argument("--data-dir", required=True, type=Path)
    create.add_argument("--app", required=True, help="the app's name (a-z 0-9 _ . -)")
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: signals, offers, outcomes, claims, consent, status",
    )
    create.set_defaults(func=cmd_token_create)
    revoke = token_verbs.add_parser("revoke", help="remove an app's token")
    revoke.add_argument("--data-dir", required=True, type=Path)
    revoke.add_argument("--app", required=True)
    revoke.set_defaults(func=cmd_token_revoke)
    bind = token_verbs.add_parser(
        "bind", help="callers on the Unix socket running as UID act as APP (peer credentials)"
    )
    bind.add_argument("--data-dir", required=True, type=Path)
    bind.add_argument("--app", default=None, help="the app (made with `token create`)")
    bind.add_argument("--uid", required=True, type=int)
    bind.add_argument("--remove", action="store_true", help="UID acts as no app any more")
    bind.set_defaults(func=cmd_token_bind)
    listing = token_verbs.add_parser("list", help="the apps with a token and their scopes")
    listing.add_argument("--data-dir", required=True, type=Path)
    listing.set_defaults(func=cmd_token_list)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `agent` group to the `edgemart` command."""
    parser = subparsers.add_parser("agent", help="the on-device agent")
    _add_verbs(parser)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The agent-level options given on the command line, as overrides."""
    given = {
        "mqtt_username": args.mqtt_username,
        "mqtt_password_file": args.mqtt_password_file,
        "mqtt_ca_file": args.mqtt_ca_file,
        "topic_root": args.topic_root,
        "claim_file": args.claim,
        "provision_url": args.provision_url,
        "household_invite_file": args.household_invite,
        "api_socket": args.api_socket,
        "api_socket_group": args.api_socket_group,
    }
    return {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None}


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from agent.config import BROKER_ENV, load_settings  # noqa: PLC0415  # light `--help`
    from agent.runtime.agent import run_agent  # noqa: PLC0415
    from daemonkit.ports import busy  # noqa: PLC0415

    broker = args.broker or os.environ.get(BROKER_ENV)
    if not broker:
        print(f"edgemart agent: --broker is required (or set {BROKER_ENV})", file=sys.stderr)
        return 2
    try:
        profile_port = args.api_port == PROFILE_PORT
        api_port = None if profile_port else args.api_port
        settings = load_settings(
            profile=args.profile,
            device_id=args.device_id,
            broker=broker,
            data_dir=args.data_dir,
            api_port=api_port,
            trust=args.trust,
            config_file=args.config,
            overrides=_options(args),
        )
        if profile_port:
            settings = settings.model_copy(update={"api_port": settings.profile.api_port})
        if settings.api_port is not None and (why := busy("127.0.0.1", settings.api_port)):
            flag = "--api-port" if not profile_port else "--api-port (the profile's api_port)"
            print(f"edgemart agent: {flag} {settings.api_port}: {why}", file=sys.stderr)
            return 2
        asyncio.run(run_agent(settings, on_ready=_announce))
    except AgentError as exc:
        print(f"edgemart agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """Print a new token for `--app` (it replaces the app's previous one)."""
    from agent.api.owners import create_token  # noqa: PLC0415

    try:
        print(create_token(args.data_dir, args.app, args.scopes))
    except (AgentError, OSError) as exc:
        print(f"edgemart agent token create: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_token_bind(args: argparse.Namespace) -> int:
    """`token bind --app APP --uid UID` (or `--remove`): peer credentials on the socket."""
    from agent.api.owners import bind_uid, unbind_uid  # noqa: PLC0415

    try:
        if args.remove:
            if not unbind_uid(args.data_dir, args.uid):
                print(
                    f"edgemart agent token bind: uid {args.uid} is bound to no app", file=sys.stderr
                )
                return 1
            return 0
        if args.app is None:
            print("edgemart agent token bind: --app is required (or --remove)", file=sys.stderr)
            return 2
        bind_uid(args.data_dir, args.app, args.uid)
    except (AgentError, OSError) as exc:
        print(f"edgemart agent token bind: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from agent.api.owners import revoke_token  # noqa: PLC0415

    try:
        found = revoke_token(args.data_dir, args.app)
    except (AgentError, OSError) as exc:
        print(f"edgemart agent token revoke: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(f"edgemart agent token revoke: no token for app {args.app!r}", file=sys.stderr)
        return 1
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from agent.api.owners import list_apps  # noqa: PLC0415

    try:
        apps = list_apps(args.data_dir)
    except (AgentError, OSError) as exc:
        print(f"edgemart agent token list: {exc}", file=sys.stderr)
        return 2
    for app, scopes in sorted(apps.items()):
        print(f"{app}\t{','.join(scopes)}")
    return 0


def _announce(agent: Agent) -> None:
    """One line on stdout once serving, so scripts using `--api-port 0` learn the port."""
    api = f"http://127.0.0.1:{agent.api_port}" if agent.api_port is not None else "off"
    if agent.settings.api_socket is not None:
        api += f" and unix:{agent.settings.api_socket}"
    link = "connected" if agent.link.connected.is_set() else "connecting"
    print(
        f"agent {agent.settings.device_id} ready: local API {api}, broker"
        f" {agent.link.broker} ({link}), topic root {agent.settings.topic_root}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgemart agent", description="the on-device agent")
    _add_verbs(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
