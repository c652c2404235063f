"""The `edgemart` command a new user meets first: `--help` answers at once (no daemon, driver
or model runtime imported for it) and a mistyped option is named as the typo it is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgemart.cli import build_parser, main, unknown_option

HEAVY = (
    "pydantic",
    "aiohttp",
    "onnxruntime",
    "numpy",
    "psycopg",
    "rich",
    "cryptography",
    "amqtt",
    "aiomqtt",
    "sqlite_utils",
    "zeroconf",
    "agent.runtime",
    "cloud_gateway.runtime",
    "simulators.demo",
)

PROBE = """
import json, sys
from edgemart.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r}
                        or any(m == h or m.startswith(h + '.') for h in {heavy!r}))))
"""


def _imported_by(argv: list[str]) -> list[str]:
    roots = sorted({h for h in HEAVY if "." not in h})
    code = PROBE.format(argv=argv, roots=roots, heavy=list(HEAVY))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["agent", "run", "--help"],
        ["gateway", "run", "--help"],
        ["demo", "--help"],
        ["fleet", "--help"],
        ["model", "--help"],
        ["bench", "--help"],
    ],
)
def test_help_imports_no_heavy_module(argv: list[str]) -> None:
    """`edgemart --help` under 0.3 s comes from importing only argparse-level modules: the
    daemons, pydantic, aiohttp, onnxruntime and the database drivers load when a verb runs."""
    assert _imported_by(argv) == []


def test_a_mistyped_option_is_named_with_the_one_meant(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["agent", "run", "--profle", "tv", "--device-id", "tv-0001"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized argument --profle (did you mean --profile?)" in err
    assert "required" not in err  # not the missing --profile argparse would report first


def test_known_options_prefixes_and_values_pass() -> None:
    parser = build_parser()
    ok = [
        ["gateway", "run", "--broker", "mqtt://h:1", "--data-dir", "d", "--http-port=0"],
        ["gateway", "run", "--brok", "mqtt://h:1"],  # a unique prefix, as argparse allows
        ["fleet", "--faults", "partition", "-v", "--", "--anything"],
        ["agent", "run", "--profile", "tv", "--topic-root", "x/v1"],
    ]
    for argv in ok:
        assert unknown_option(parser, argv) is None, argv
    found = unknown_option(parser, ["gateway", "token", "create", "--data-dri", "x"])
    assert found is not None
    verb, message = found
    assert verb.prog == "edgemart gateway token create"
    assert message == "unrecognized argument --data-dri (did you mean --data-dir?)"
