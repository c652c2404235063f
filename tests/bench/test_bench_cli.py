"""`edgemart bench --only SUITE` re-measures one suite and keeps every other figure in the
results file and the table, instead of replacing them with its own few."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest

from bench import cli
from bench.record import Record, write_results


def _suite(*records: Record) -> types.ModuleType:
    module = types.ModuleType("bench_fake_suite")
    module.run = lambda: list(records)  # type: ignore[attr-defined]
    return module


@pytest.mark.integration  # write_results asks platform.processor(), which runs `uname -p`
def test_only_merges_its_figures_into_the_existing_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, table = tmp_path / "latest.json", tmp_path / "benchmarks.md"
    write_results(
        [
            Record("decision.p99", 2.0, "ms", "sklearn", 4.0),
            Record("fake.rate", 100.0, "msg/s", "json", 50.0),
            Record("ingest.rate", 9000.0, "msg/s", "naive", 3000.0),
        ],
        out,
        table,
    )
    fresh = _suite(
        Record("fake.rate", 300.0, "msg/s", "json", 60.0), Record("fake.new", 1, "x", "y", 1)
    )
    monkeypatch.setitem(sys.modules, "bench_fake_suite", fresh)
    monkeypatch.setattr(cli, "SUITES", ["bench.rss_bench", "bench_fake_suite"])
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--only", "fake", "--out", str(out), "--table", str(table)])
    assert args.func(args) == 0
    records = {r["name"]: r for r in json.loads(out.read_text())["records"]}
    assert list(records) == ["decision.p99", "fake.rate", "ingest.rate", "fake.new"]
    assert records["fake.rate"]["value"] == 300.0
    assert records["ingest.rate"]["value"] == 9000.0
    text = table.read_text()
    assert "`decision.p99`" in text and "`ingest.rate`" in text and "`fake.new`" in text
