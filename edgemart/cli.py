"""`edgemart <area> <verb>`: a thin dispatcher over each room's own verbs."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable, Sequence

from edgemart import __version__

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrars() -> list[Registrar]:
    # Each room owns its verbs. Its `cli` module imports only argparse-level things at the
    # top (the rest when a verb runs), so `edgemart --help` stays light (tests/edgemart).
    from agent.cli import register as agent_verbs  # noqa: PLC0415
    from bench.cli import register as bench_verbs  # noqa: PLC0415
    from cloud_gateway.cli import register as gateway_verbs  # noqa: PLC0415
    from cloud_gateway.security.keys_cli import register as key_verbs  # noqa: PLC0415
    from models.cli import register as model_verbs  # noqa: PLC0415
    from simulators.cli import register as simulator_verbs  # noqa: PLC0415

    return [agent_verbs, gateway_verbs, key_verbs, model_verbs, simulator_verbs, bench_verbs]


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


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_option(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.ArgumentParser, str] | None:
    """The first `--option` in `argv` that the verb it follows does not take: that verb's
    parser and the message, with the closest known spelling; None when every one is known.

    argparse checks required options before unknown ones, so `--profle tv` would otherwise be
    reported as a missing `--profile`, not as the typo it is."""
    known: set[str] = set()
    current = parser
    for arg in argv:
        if arg == "--":
            break
        known.update(current._option_string_actions)
        choices = _subcommands(current)
        if arg in choices:
            current = choices[arg]
            continue
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        here = set(current._option_string_actions) | known
        if name in here or sum(k.startswith(name) for k in here if k.startswith("--")) == 1:
            continue  # argparse takes a unique prefix too
        close = difflib.get_close_matches(name, sorted(k for k in here if k.startswith("--")), 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return current, f"unrecognized argument {name}{hint}"
    return None


def configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args_in = list(sys.argv[1:] if argv is None else argv)
    problem = unknown_option(parser, args_in)
    if problem is not None:
        verb, message = problem
        verb.error(message)  # usage and the message on stderr, exit status 2
    args = parser.parse_args(args_in)
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
