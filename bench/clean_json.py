"""What cleaning a request body costs: ``kernel.util.clean_json``, which every REST body, query
string and MCP message passes through (NULs dropped, lone surrogates replaced, nesting and
number range checked), on a hook-shaped body, here and at other commits.

    python bench/clean_json.py [--revs fdc6c91,HEAD] [--rounds 7] [--calls 300] [--items 300]

Each commit's ``kernel/util.py`` is read from git and loaded on its own (the module imports only
the standard library), then all are timed in turn, round after round, so they meet the same
load. Prints CPU milliseconds per body (median and best of the rounds) and the body's size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from machine import header

ROOT = Path(__file__).resolve().parent.parent
UTIL = "src/agentmemory_server/kernel/util.py"


def util_at(rev: str, folder: Path) -> ModuleType:
    """``kernel/util.py`` as it was at ``rev``, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:{UTIL}"], cwd=ROOT, capture_output=True, text=True, check=True)
    path = folder / f"util_{len(list(folder.iterdir()))}.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hook_body(items: int) -> dict:
    """A post_tool_use event whose tool input holds ``items`` small objects (strings, numbers,
    a short list each) and a 5 KB output: about 86 bytes per item."""
    tool_input = {"command": "x" * 200, "list": [{"a": i, "b": "y" * 30, "c": [1.5, 2, 3]} for i in range(items)]}
    return {"hookType": "post_tool_use", "sessionId": "s",
            "data": {"tool_name": "Bash", "tool_input": tool_input, "tool_output": "z" * 5000}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", default="HEAD", help="commits to compare, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300, help="bodies cleaned per round and commit")
    parser.add_argument("--items", type=int, default=300, help="objects in the body's tool input")
    args = parser.parse_args()
    header("clean_json")
    body = json.loads(json.dumps(hook_body(args.items)))
    print(f"body: {len(json.dumps(body)):,} bytes of JSON")
    revs = args.revs.split(",")
    with tempfile.TemporaryDirectory() as folder:
        modules = {rev: util_at(rev, Path(folder)) for rev in revs}
        timings: dict[str, list[float]] = {rev: [] for rev in revs}
        for _ in range(args.rounds):
            for rev, module in modules.items():
                started = time.process_time()
                for _ in range(args.calls):
                    module.clean_json(body)
                timings[rev].append((time.process_time() - started) / args.calls * 1000)
    for rev, ms in timings.items():
        print(f"{rev}: {statistics.median(ms):.3f} ms CPU per body (median of {args.rounds}), best {min(ms):.3f}")
    print(json.dumps({"bench": "clean_json", "bodyBytes": len(json.dumps(body)),
                      "msPerBody": {rev: round(statistics.median(ms), 4) for rev, ms in timings.items()}}))


if __name__ == "__main__":
    sys.exit(main())
