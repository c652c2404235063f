"""Where a process's memory goes: not a figure of `python -m bench`, a tool for reading one.

* `python -m bench.rss_breakdown imports [MODULE ...]`: a fresh interpreter imports the modules
  one after another (default: the thin agent's chain) and prints, per step, the growth of Rss,
  Anonymous and file-backed pages (`/proc/self/smaps_rollup`) and the modules it added; then
  which of `numpy`, `onnxruntime`, ... ended up in `sys.modules`.
* `python -m bench.rss_breakdown traced [MODULE ...]`: the same imports under `tracemalloc`:
  the Python heap they leave behind, per package (by the file that allocated it).
* `python -m bench.rss_breakdown without PKG[,PKG...] [MODULE ...]`: what a cut would save
  before making it: a fresh interpreter imports every module the chain loads except those of
  the blocked top-level packages (an import that needs one fails and is skipped, so the
  modules that depend on a blocked package go too) and prints its Rss beside the full
  chain's. An estimate: a real cut also keeps whatever replaces the blocked package.
* `python -m bench.rss_breakdown pid PID`: a running process (an `edgemart agent run`): its
  `smaps_rollup` (Rss, Pss, Anonymous) and its resident pages per mapped file, largest first.

`python -X importtime` gives the import *time* of each module; this gives their *memory*.
"""

from __future__ import annotations

import importlib
import importlib.abc
import subprocess
import sys
from pathlib import Path

THIN_CHAIN = (
    "asyncio",
    "ssl",
    "pydantic",
    "protocol.envelopes",
    "h11",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "aiomqtt",
    "agent.config",
    "agent.decide.thin",
    "agent.runtime.agent",
    "agent.api.local",
    "agent.cli",
    "zeroconf",
    "agent.household.client",
)
"""The imports of `edgemart agent run`, grouped: each step is charged what it adds."""
WATCHED = (
    "numpy",
    "onnxruntime",
    "aiohttp",
    "prometheus_client",
    "zeroconf",
    "asyncpg",
    "cloud_gateway",
)
"""Modules a thin agent should not carry (the full agent's, the gateway's, rarely used)."""


def rollup(pid: int | str = "self") -> dict[str, float]:
    """`/proc/<pid>/smaps_rollup` in MB (Rss, Pss, Anonymous, ...)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) / 1024.0
    return out


def by_file(pid: int | str = "self") -> dict[str, float]:
    """Resident MB per mapping name (a library's path, `[heap]`, or `anon`)."""
    resident: dict[str, float] = {}
    name = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=5)
        if first and "-" in first[0] and len(first) >= 5 and ":" in first[3]:
            name = first[5].strip() if len(first) == 6 else "anon"
        elif first and first[0] == "Rss:":
            resident[name] = resident.get(name, 0.0) + int(first[1]) / 1024.0
    return resident


def imports(modules: tuple[str, ...]) -> None:
    prev = rollup()
    print(f"{'interpreter':52s} rss {prev['Rss']:6.1f}  anon {prev['Anonymous']:5.1f}")
    for name in modules:
        before = len(sys.modules)
        importlib.import_module(name)
        now = rollup()
        file_now = now["Rss"] - now["Anonymous"]
        file_prev = prev["Rss"] - prev["Anonymous"]
        print(
            f"{name[:52]:52s} rss +{now['Rss'] - prev['Rss']:5.1f}"
            f"  anon +{now['Anonymous'] - prev['Anonymous']:5.1f}"
            f"  file +{file_now - file_prev:5.1f}  modules +{len(sys.modules) - before}"
        )
        prev = now
    print(
        f"{'total':52s} rss {prev['Rss']:6.1f}  anon {prev['Anonymous']:5.1f}"
        f"  pss {prev['Pss']:5.1f}  modules {len(sys.modules)}"
    )
    print("loaded:", {m: m in sys.modules for m in WATCHED})


def traced(modules: tuple[str, ...]) -> None:
    import tracemalloc  # noqa: PLC0415 - only this mode pays for it

    tracemalloc.start()
    for name in modules:
        importlib.import_module(name)
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per: dict[str, float] = {}
    for stat in snapshot.statistics("filename"):
        path = stat.traceback[0].filename
        if "site-packages/" in path:
            key = path.split("site-packages/")[1].split("/")[0]
        elif "/lib/python3" in path:
            key = "stdlib:" + path.split("/lib/python3")[1].split("/")[1]
        elif path.startswith("<"):
            key = path  # <frozen importlib._bootstrap>: code objects of every module
        else:
            key = "repo:" + "/".join(Path(path).parts[-3:-1])
        per[key] = per.get(key, 0.0) + stat.size / (1024.0 * 1024.0)
    total = sum(per.values())
    print(f"traced Python heap after the imports: {total:.1f} MB")
    for key, mb in sorted(per.items(), key=lambda item: -item[1])[:25]:
        print(f"{mb:7.2f} MB  {key}")


class _Block(importlib.abc.MetaPathFinder):
    """Refuses the imports of some top-level packages (the `without` mode)."""

    def __init__(self, blocked: frozenset[str]) -> None:
        self.blocked = blocked

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.blocked:
            raise ImportError(f"blocked by rss_breakdown: {name}", name=name)


def _chain_modules(modules: tuple[str, ...]) -> list[str]:
    """Every module a fresh interpreter holds after importing `modules`, in load order."""
    code = f"import importlib, sys\nfor m in {list(modules)!r}: importlib.import_module(m)\n"
    code += "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.split()


def _blocked_rss(blocked: list[str], modules: list[str]) -> str:
    """A child interpreter imports `modules` refusing `blocked`; its summary line."""
    code = f"from bench.rss_breakdown import _imports_blocked; _imports_blocked({blocked!r})"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        input="\n".join(modules),
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def without(blocked: frozenset[str], modules: tuple[str, ...]) -> None:
    full = _chain_modules(modules)
    print(f"the chain ({len(full)} modules):  {_blocked_rss([], full)}")
    print(f"without {','.join(sorted(blocked))}:  {_blocked_rss(sorted(blocked), full)}")


def _imports_blocked(blocked: list[str]) -> None:
    """In the child of `without`: import the module names on stdin, refusing `blocked`."""
    sys.meta_path.insert(0, _Block(frozenset(blocked)))
    skipped = 0
    for name in sys.stdin.read().split():
        try:
            importlib.import_module(name)
        except ImportError:
            skipped += 1
    roll = rollup()
    print(
        f"rss {roll['Rss']:5.1f}  anon {roll['Anonymous']:5.1f}  modules {len(sys.modules)}"
        f" (skipped {skipped})"
    )


def process(pid: int) -> None:
    roll = rollup(pid)
    print(" ".join(f"{k} {roll[k]:.1f}" for k in ("Rss", "Pss", "Anonymous", "Shared_Clean")))
    files = sorted(by_file(pid).items(), key=lambda item: -item[1])
    for name, mb in files[:25]:
        print(f"{mb:7.2f} MB  {name}")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "pid":
        process(int(argv[1]))
        return 0
    if len(argv) >= 2 and argv[0] == "without":
        without(frozenset(argv[1].split(",")), tuple(argv[2:]) or THIN_CHAIN)
        return 0
    if argv and argv[0] == "traced":
        traced(tuple(argv[1:]) or THIN_CHAIN)
        return 0
    if argv and argv[0] == "imports":
        imports(tuple(argv[1:]) or THIN_CHAIN)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
