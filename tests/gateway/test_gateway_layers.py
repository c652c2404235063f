"""The gateway's rules between its rooms (docs/architecture.md): `api` is the only room that
knows HTTP, `db` the only one that knows SQL and its drivers, the domain imports neither `api`
nor `runtime`. (The rules between packages are `tests/test_architecture.py`'s.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cloud_gateway

ROOT = Path(cloud_gateway.__file__).resolve().parent
HTTP = ("aiohttp",)
DRIVERS = ("sqlite3", "sqlite_utils", "psycopg", "asyncpg")
SQL = re.compile(
    r"^\s*(SELECT\s.*\sFROM\s|INSERT INTO |UPDATE \w+ SET |DELETE FROM |CREATE (TABLE|INDEX) )",
    re.DOTALL,
)
DOMAIN = ("campaigns", "claims", "registry", "devices", "ingest", "security", "db")


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def rooms() -> dict[str, set[str]]:
    """`room/module.py` -> what it imports, for every module of the gateway."""
    return {str(p.relative_to(ROOT)): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def uses(names: set[str], packages: tuple[str, ...]) -> bool:
    return any(n == p or n.startswith(p + ".") for n in names for p in packages)


def test_only_api_knows_http_and_only_db_knows_the_driver() -> None:
    modules = rooms()
    assert len(modules) > 40
    http = {m for m, names in modules.items() if uses(names, HTTP)}
    drivers = {m for m, names in modules.items() if uses(names, DRIVERS)}
    assert http and all(m.startswith("api/") for m in http), sorted(http)
    assert drivers and all(m.startswith("db/") for m in drivers), sorted(drivers)


def test_the_domain_imports_neither_the_api_nor_the_runtime() -> None:
    for module, names in rooms().items():
        if module.split("/")[0] in DOMAIN:
            assert not uses(names, ("cloud_gateway.api",)), module
            # the services' shared base (`runtime/wiring.py`) is the one runtime part they use
            assert not uses(names - {"cloud_gateway.runtime.wiring"}, ("cloud_gateway.runtime",)), (
                module
            )


def test_sql_is_written_only_in_db() -> None:
    found = {
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value)
    }
    assert found and all(m.startswith("db/") for m in found), sorted(found)
