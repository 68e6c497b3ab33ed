"""The shape of the code: modules, the largest module and function, and import cycles.

    python bench/code_shape.py [SRC_DIR]        (default: this checkout's src/)

Works on today's package (src/agentmemory_server) and on the flat src/*.py layout of earlier
commits (``git worktree add /tmp/old <commit>`` then point it at /tmp/old/src). Imports are
read with ``ast`` (module-level and function-level alike, TYPE_CHECKING blocks excluded), so
the numbers need nothing installed. Prints one JSON object.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


def modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the package layout or the flat one."""
    package = src / "agentmemory_server"
    if package.is_dir():
        return {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
                for p in package.rglob("*.py")}
    return {p.stem: p for p in src.glob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import mod`` imports pkg.mod (the package's __init__ only when a name
            # is not a module of it).
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            targets = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("_MODULES") for t in node.targets):
            # The flat layout loaded its tool modules by name (importlib over a TOOL_MODULES
            # tuple): a dependency the import statements do not show.
            targets = [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def largest_function(files: dict[str, Path]) -> tuple[str, int]:
    best = ("", 0)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > best[1]:
                    best = (f"{name}.{node.name}", length)
    return best


def main(argv: list[str]) -> None:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "src"
    files = modules(src)
    known = set(files)
    graph = {name: imports(name, path, known) for name, path in files.items()}
    sizes = {name: len(path.read_text().splitlines()) for name, path in files.items()}
    biggest = max(sizes, key=lambda n: sizes[n])
    function, length = largest_function(files)
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({
        "commit": commit, "modules": len(files), "lines": sum(sizes.values()),
        "largestModule": {"name": biggest, "lines": sizes[biggest]},
        "modulesOver600Lines": sorted(n for n, s in sizes.items() if s > 600),
        "largestFunction": {"name": function, "lines": length},
        "importCycles": [{"modules": len(c), "members": c} for c in cycles(graph)],
    }, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
