"""The architecture holds: packages import only the layers below them, no import cycles, every
module imports alone and says its job; runtime paths need none of the `train`/`dev` extras."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

EXTRAS_ONLY = ("onnx", "sklearn", "matplotlib", "playwright", "schemathesis", "hypothesis")

PROBE = f"""
import sys
import edgemart.cli
edgemart.cli.build_parser()
import agent.runtime.agent, cloud_gateway.runtime.gateway, simulators.demo, models.cli, bench.cli
print(",".join(m for m in {EXTRAS_ONLY!r} if m in sys.modules))
"""


@pytest.mark.integration
def test_runtime_paths_do_not_need_the_extras() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"runtime imports extras-only packages: {proc.stdout}"


MODELS_PROBE = """
import pkgutil, sys
import models
names = sorted(m.name for m in pkgutil.iter_modules(models.__path__) if m.name != "__main__")
for name in names:
    __import__(f"models.{name}")
print(",".join(names))
print(",".join(m for m in sys.modules if m == "simulators" or m.startswith("simulators.")))
"""


@pytest.mark.integration
def test_models_never_imports_the_simulated_world() -> None:
    """DESIGN: `models` trains only on logs in the gateway's export format; the world (and its
    ground-truth responses) lives in `simulators/` and must not be importable from training."""
    proc = subprocess.run(
        [sys.executable, "-c", MODELS_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported, leaked = proc.stdout.splitlines()
    assert {"train", "evaluate", "export", "gbdt", "build_default", "cli"} <= set(
        imported.split(",")
    )
    assert leaked == "", f"models imports {leaked}"


# ---------------------------------------------------------------- the layering

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "protocol",
    "mqttlink",
    "daemonkit",
    "agent",
    "cloud_gateway",
    "models",
    "simulators",
    "firmware_profiles",
    "edgemart",
    "bench",
)
# package: the packages of ours it may import (besides itself); None: any but `edgemart`
MAY_IMPORT: dict[str, frozenset[str] | None] = {
    "protocol": frozenset(),
    "mqttlink": frozenset({"protocol"}),
    "daemonkit": frozenset(),
    "models": frozenset({"protocol"}),
    "firmware_profiles": frozenset(),
    "agent": frozenset({"protocol", "mqttlink", "daemonkit", "firmware_profiles", "models"}),
    "cloud_gateway": frozenset(
        {"protocol", "mqttlink", "daemonkit", "firmware_profiles", "models"}
    ),
    "simulators": frozenset(
        {
            "protocol",
            "mqttlink",
            "daemonkit",
            "agent",
            "cloud_gateway",
            "firmware_profiles",
            "models",
        }
    ),
    "bench": None,
    "edgemart": None,
}


def _modules() -> dict[str, Path]:
    """Every module of our packages by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", "")
    return name == "TYPE_CHECKING"


def _imports(module: str, path: Path, *, typing: bool = False) -> set[str]:
    """The modules of ours `module` imports anywhere (functions too), except under
    `if TYPE_CHECKING:` unless `typing`: `from a import b` counts as `a.b` when that is a
    module, else `a`."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and not typing and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                targets.add(name if name in MODULES else base)
        for sub in ast.iter_child_nodes(node):
            visit(sub)

    visit(tree)
    return {t for t in targets if t in MODULES and t != module}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}
TYPING_GRAPH = {name: _imports(name, path, typing=True) for name, path in MODULES.items()}


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        mine = module.split(".")[0]
        allowed = MAY_IMPORT[mine]
        for target in sorted(targets):
            theirs = target.split(".")[0]
            if theirs == mine:
                continue
            if theirs == "edgemart" or (allowed is not None and theirs not in allowed):
                wrong.append(f"{module} imports {target}")
    assert wrong == [], "imports across the layers:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules() -> None:
    cycles = _cycles(GRAPH)
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycles_even_through_type_checking_imports() -> None:
    cycles = _cycles(TYPING_GRAPH)
    assert cycles == [], "typing import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_every_module_says_its_job_in_its_first_docstring_line() -> None:
    missing = []
    for module, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or not doc.splitlines()[0].strip():
            missing.append(module)
    assert missing == [], f"modules without a first docstring line: {missing}"


def test_every_package_folder_has_an_init_with_a_one_line_docstring() -> None:
    wrong = []
    for package in PACKAGES:
        for folder in [ROOT / package, *(ROOT / package).rglob("*")]:
            if not folder.is_dir() or not any(folder.glob("*.py")):
                continue
            init = folder / "__init__.py"
            doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
            if not doc or len(doc.strip().splitlines()) != 1:
                wrong.append(str(folder.relative_to(ROOT)))
    assert wrong == [], f"package folders without a one-line docstring in __init__.py: {wrong}"


IMPORT_EACH = """
import importlib, sys, traceback
ours = {packages!r}
failed = []
for name in {modules!r}:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ours]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-3))
print("\\n".join(failed))
"""


@pytest.mark.integration
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module imported first, with none of ours loaded (a cycle that only bites in
    one import order shows here). `__main__` modules run their CLI when imported: skipped."""
    modules = sorted(m for m in MODULES if not m.endswith("__main__"))
    probe = IMPORT_EACH.format(packages=PACKAGES, modules=modules)
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout[-5000:]
