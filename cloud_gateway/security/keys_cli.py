"""`edgemart keys <verb>`: the operator's key ring (issue 14), a few lines over `keys_ring`.

Verbs that change the list take `--root FILE`, the offline root the operator keeps apart;
running gateways read the result from `DATA_DIR/keys/` within `keys_watch_s` (2 s)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    area = sub.add_parser("keys", help="the fleet's signing keys: root, rotation, revocation")
    verbs = area.add_subparsers(dest="verb", metavar="<verb>", required=True)

    def verb(name: str, help_text: str, *, root: bool = True) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        parser.add_argument("--data-dir", required=True, type=Path, help="the gateway's")
        if root:
            parser.add_argument("--root", required=True, type=Path, help="the root key file")
        parser.add_argument("-v", "--verbose", action="count", default=0)
        return parser

    init = verb("init", "give the gateway's keys an offline root (made if the file is absent)")
    init.add_argument("--topic-root", default=None)
    init.set_defaults(func=_init)
    add = verb("add", "a new online key, announced in a new list (not used yet)")
    add.add_argument("--roles", default="", help="comma-separated (default: every role)")
    add.set_defaults(func=_add)
    activate = verb("activate", "running gateways sign with KID within seconds", root=False)
    activate.add_argument("kid")
    activate.set_defaults(func=_activate)
    retire = verb("retire", "KID leaves the list (what it signed stays valid until it expires)")
    retire.add_argument("kid")
    retire.set_defaults(func=_retire)
    revoke = verb("revoke", "emergency: KID leaves the list, devices drop what it signed")
    revoke.add_argument("kid")
    revoke.set_defaults(func=_revoke)
    rotate = verb("rotate-root", "a new root signed by the old one")
    rotate.add_argument("--new-root", required=True, type=Path, help="file for the new root")
    rotate.set_defaults(func=_rotate_root)
    show = verb("show", "the key ring: version, root, keys and their status", root=False)
    show.set_defaults(func=_show)


def _run(action: Any) -> int:
    from cloud_gateway.errors import GatewayError  # noqa: PLC0415 - light `--help`

    try:
        result = action()
    except GatewayError as exc:
        print(f"edgemart keys: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        print(result)
    return 0


def _init(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    def act() -> str:
        signed = keys_ring.init(args.data_dir, args.root, args.topic_root)
        return f"key list version {signed['version']} signed by {signed['kid']}"

    return _run(act)


def _add(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    roles = [r.strip() for r in args.roles.split(",") if r.strip()] or None
    return _run(lambda: keys_ring.add(args.data_dir, args.root, roles))


def _activate(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    return _run(lambda: keys_ring.activate(args.data_dir, args.kid))


def _retire(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    return _run(lambda: f"version {keys_ring.retire(args.data_dir, args.root, args.kid)}")


def _revoke(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    def act() -> str:
        version = keys_ring.retire(args.data_dir, args.root, args.kid, revoke=True)
        return f"version {version}: running gateways switch within seconds"

    return _run(act)


def _rotate_root(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    return _run(lambda: keys_ring.rotate_root(args.data_dir, args.root, args.new_root))


def _show(args: argparse.Namespace) -> int:
    from cloud_gateway.security import keys_ring  # noqa: PLC0415

    def act() -> str:
        ring = keys_ring.read_ring(args.data_dir)
        return json.dumps(ring.to_json() if ring else None, indent=2)

    return _run(act)
