"""`edgemart <area> <verb>`: a thin dispatcher over each room's own verbs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from edgemart import __version__

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrars() -> list[Registrar]:
    # Each room owns its verbs; imported on use so that importing edgemart stays light.
    from agent.cli import register as agent_verbs  # noqa: PLC0415
    from bench.cli import register as bench_verbs  # noqa: PLC0415
    from cloud_gateway.cli import register as gateway_verbs  # noqa: PLC0415
    from models.cli import register as model_verbs  # noqa: PLC0415
    from simulators.cli import register as simulator_verbs  # noqa: PLC0415

    return [agent_verbs, gateway_verbs, model_verbs, simulator_verbs, bench_verbs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemart",
        description="On-device marketing agent for AIoT fleets: agent, gateway, demo, fleet,"
        " bench.",
    )
    parser.add_argument("--version", action="version", version=f"edgemart {__version__}")
    sub = parser.add_subparsers(dest="area", metavar="<area>")
    for register in _registrars():
        register(sub)
    return parser


def configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    configure_logging(getattr(args, "verbose", 0) or 0)
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
