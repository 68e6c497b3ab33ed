"""How fast this machine is right now, printed beside a bench's figures.

Machines of one kind here differ: bench/ingest.py gave 887 observations/s on one, and 450-510
on another two days later with an observe path that had not become slower (the older commit,
run beside it, gave 459). A figure is read against the machine it came
from: ``reference()`` times a fixed pure-Python loop on one core (seconds; lower is faster)
and reads the load average, so two runs can be compared, or told apart.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

LOOP = 10_000_000
ROOT = Path(__file__).resolve().parent.parent


def python_loop_seconds(repeat: int = 3) -> float:
    """The best of ``repeat`` timings of summing ``LOOP`` integers in a Python loop."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        total = 0
        for i in range(LOOP):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


def reference() -> dict[str, float]:
    return {"pythonLoopSeconds": round(python_loop_seconds(), 3), "loadAverage": round(os.getloadavg()[0], 2)}


def describe(ref: dict[str, float]) -> str:
    return (f"machine: a {LOOP:,}-step Python loop takes {ref['pythonLoopSeconds']} s on one core "
            f"(lower is faster), load average {ref['loadAverage']}")


def header(*about: str) -> tuple[str, dict[str, float]]:
    """Print a bench's first line: when, which commit, what the run is (``about``: its backend...)
    and how fast this machine is now. Returns the commit and ``reference()`` for its JSON line."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit, ref = git.stdout.strip(), reference()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {', '.join((commit, *about))}; {describe(ref)}")
    return commit, ref


if __name__ == "__main__":
    print(describe(reference()))
