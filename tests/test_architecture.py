"""The architecture rules of AGENTS.md, checked on the code itself.

- imports flow one way (adapters -> wiring -> features -> kernel -> storage), as the import-linter
  contracts in pyproject.toml say, and no module imports itself in a circle;
- every SQL statement lives in ``storage/``;
- nothing edits ``sys.path``;
- the SQLite backend implements every repository of the storage interface.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import subprocess

import grimp
import pytest

from agentmemory_server.storage import interfaces
from agentmemory_server.storage.blobs import BlobStore
from agentmemory_server.storage.postgres import PostgresDatabase, PostgresUnitOfWork
from agentmemory_server.storage.sqlite import Database as SqliteDatabase
from agentmemory_server.storage.sqlite import SqliteUnitOfWork
from conftest import ROOT, SRC

PACKAGE = SRC / "agentmemory_server"
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK|WITH)\b.*"
                 r"\b(FROM|INTO|SET|TABLE|INDEX|VALUES|WHERE|TRANSACTION|IMMEDIATE|user_version|journal_mode|"
                 r"integrity_check|quick_check|wal_checkpoint)\b", re.IGNORECASE | re.DOTALL)


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint_imports), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=SRC,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Contracts: ([2-9]|\d\d+) kept, 0 broken", proc.stdout), proc.stdout


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Groups of modules that import each other in a circle (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[set[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def test_no_import_cycles():
    graph = grimp.build_graph("agentmemory_server", exclude_type_checking_imports=True)
    cycles = [sorted(g) for g in strongly_connected(graph) if len(g) > 1]
    assert len(graph.modules) > 50 and cycles == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert [sorted(g) for g in strongly_connected(graph) if len(g) > 1] == [["pkg.a", "pkg.b"]]


def sql_strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    in_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in in_fstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            found.append((node.lineno, node.value[:60]))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if SQL.match(text):
                found.append((node.lineno, text[:60]))
    return found


def test_sql_lives_only_in_storage():
    outside = {str(p.relative_to(PACKAGE)): hits for p in python_files(PACKAGE)
               if "storage" not in p.relative_to(PACKAGE).parts and (hits := sql_strings(p))}
    inside = sum(len(sql_strings(p)) for p in python_files(PACKAGE / "storage"))
    assert outside == {} and inside > 50


def test_the_sql_finder_sees_sql_in_fstrings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('table = "kv"\nq = f"SELECT value FROM {table} WHERE scope = ?"\nr = "select the best"\n')
    assert [line for line, _ in sql_strings(sample)] == [2]


# Ceilings, not the aim: AGENTS.md asks for modules under ~600 lines and functions under ~40. A
# module past the ceiling is split into coherent modules (as storage/*/database.py, working/,
# memory/transfer.py, kernel/runtime.py and models/llm_steps.py were), not let grow into a god
# module; lower these as the code allows (every module was at most 560 lines when this became 600).
MODULE_LINES_MAX = 600
FUNCTION_LINES_MAX = 120


def oversized(path: Path) -> list[str]:
    """The module itself and the functions in it that pass their ceiling, with their sizes."""
    text = path.read_text()
    found = []
    if (lines := len(text.splitlines())) > MODULE_LINES_MAX:
        found.append(f"{lines} lines")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if (size := node.end_lineno - node.lineno + 1) > FUNCTION_LINES_MAX:
                found.append(f"{node.name}: {size} lines")
    return found


def test_no_module_or_function_grows_past_its_ceiling():
    too_big = {str(p.relative_to(PACKAGE)): hits for p in python_files(PACKAGE) if (hits := oversized(p))}
    assert too_big == {}


def test_the_size_check_sees_a_long_module_and_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES_MAX))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def long():\n{body}\n" + "\n" * MODULE_LINES_MAX)
    assert oversized(sample) == [f"{FUNCTION_LINES_MAX + 1 + MODULE_LINES_MAX} lines", f"long: {FUNCTION_LINES_MAX + 1} lines"]


@pytest.mark.parametrize("root", ["src", "tests"])
def test_nothing_edits_sys_path(root):
    offenders = [str(p.relative_to(ROOT)) for p in python_files(ROOT / root)
                 if re.search(r"sys\.path(\.insert|\.append|\[[^\]]*\]\s*=)", p.read_text())
                 and p.name != "test_architecture.py"]
    assert offenders == []


REPOSITORIES = {
    "records": interfaces.Records, "events": interfaces.CaptureLog, "index": interfaces.SearchIndex,
    "vectors": interfaces.VectorStore, "audit": interfaces.AuditLog, "jobs": interfaces.JobQueue,
    "working": interfaces.WorkingStore, "admin": interfaces.Admin, "live": interfaces.EventLog,
    "images": interfaces.ImageIndex, "inbox": interfaces.CaptureInbox, "usage": interfaces.ModelUsage,
}


def assert_implements(protocol: type, implementation: object, area: str) -> None:
    for name, member in inspect.getmembers(protocol, inspect.isfunction):
        if name.startswith("_"):
            continue
        impl = getattr(implementation, name, None)
        assert callable(impl), f"{area}.{name} is missing"
        wanted = [p for p in inspect.signature(member).parameters if p != "self"]
        assert list(inspect.signature(impl).parameters) == wanted, f"{area}.{name} takes other parameters"


@pytest.mark.sqlite_only  # the SQLite classes themselves; PostgreSQL's are checked below
@pytest.mark.parametrize("area", sorted(REPOSITORIES))
def test_sqlite_implements_every_repository_method(rt, area):
    assert isinstance(rt.db.reader(), SqliteUnitOfWork)
    assert_implements(REPOSITORIES[area], getattr(rt.db.reader(), area), area)


@pytest.mark.parametrize("area", sorted(REPOSITORIES))
def test_postgres_implements_every_repository_method(area):
    # The repositories only keep the connection they are given, so no server is needed here;
    # tests/test_postgres.py and the suites run on both backends exercise them for real.
    unit = PostgresUnitOfWork(conn=None, writable=False, legacy_images=BlobStore(Path("/nonexistent")))
    assert_implements(REPOSITORIES[area], getattr(unit, area), area)


def test_both_databases_offer_the_database_interface():
    for cls in (SqliteDatabase, PostgresDatabase):
        for name, member in inspect.getmembers(interfaces.Database, inspect.isfunction):
            if not name.startswith("_"):
                assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is missing"


def test_entry_points_stay_where_users_look():
    for name in ("app.py", "db.py", "functions.py", "search.py", "cli.py", "mcp_stdio.py", "viewer/index.html"):
        assert (SRC / name).exists(), name
    assert (ROOT / "sync.py").exists() and (ROOT / "start.sh").exists()
    assert "agentmemory_server" not in sys.builtin_module_names
