"""A simulated coding-agent session, as the hook events a Claude Code session sends to /observe.

Used by bench/llm_compress.py to measure model tokens per feature and what the low-value filter
saves. No recorded sessions ship with the project, so the session is simulated, with its
shape taken from published measurements of real Claude Code sessions:

- **Tool mix** (share of tool calls): Bash 37 %, Read 25 %, Edit 15 %, Grep 11 %, Write 5 %,
  Glob 3 %, task list 3 % (TaskCreate/TaskUpdate), WebSearch 2 %: the per-tool counts the
  ``cc-multi`` analyser prints for 1,835 sessions (github.com/yurukusa/cc-multi README).
- **Re-reads**: reads per distinct file read about 2.5 (median "re-read rate" of the
  axmetrics.dev demo dashboard); the agent works on a small set of hot files.
- **Shell commands**: test runs, git, one-off scripts and navigation (ls, pwd, cd) in the
  proportions of ``SHELL_MIX`` (an assumption; printed with the results).

The workspace is simulated, so outputs are consistent: a Read returns the file's current
content (a re-read after an edit shows the new content), ``git status`` lists the files changed
so far, and test runs end with a wall time that differs between runs (as pytest's does), so two
test runs are never byte-identical. What repeats is therefore what would repeat for real.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

TOOL_MIX = (("Bash", 37), ("Read", 25), ("Edit", 15), ("Grep", 11), ("Write", 5), ("Glob", 3), ("Task", 3),
            ("WebSearch", 2))
SHELL_MIX = (("test", 30), ("git", 20), ("script", 35), ("navigate", 15))
MODULES = ("auth", "cart", "orders", "payments", "users", "search", "cache", "config", "api", "models",
           "views", "utils", "db", "jobs", "mail", "billing")
WORDS = ("token", "session", "retry", "timeout", "user", "order", "price", "cache", "queue", "parse", "validate",
         "config", "handler", "request", "response", "schema", "migrate", "index", "query", "total")


def _pick(rng: random.Random, mix: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([name for name, _ in mix], weights=[w for _, w in mix])[0]


@dataclass
class Workspace:
    rng: random.Random
    versions: dict[str, int] = field(default_factory=dict)

    def content(self, path: str) -> str:
        """The file as Claude Code's Read shows it (numbered lines), at its current version."""
        seed = f"{path}:{self.versions.get(path, 0)}"
        local = random.Random(seed)
        lines = [f"def {local.choice(WORDS)}_{local.choice(WORDS)}_{n}(value):" if n % 7 == 0 else
                 f"    {local.choice(WORDS)} = {local.choice(WORDS)}({local.randint(0, 999)})"
                 for n in range(local.randint(40, 160))]
        return "\n".join(f"{n + 1:>6}\t{line}" for n, line in enumerate(lines))

    def edit(self, path: str) -> None:
        self.versions[path] = self.versions.get(path, 0) + 1

    def changed(self) -> list[str]:
        return sorted(p for p, v in self.versions.items() if v)

    def tests(self, target: str) -> str:
        state = random.Random(f"{target}:{sorted(self.versions.items())}")
        failed = state.randint(0, 3)
        seconds = self.rng.uniform(0.4, 9.0)  # wall time differs on every run
        lines = [f"FAILED {target}::test_{state.choice(WORDS)} - AssertionError" for _ in range(failed)]
        return "\n".join([*lines, f"{failed} failed, {state.randint(20, 80)} passed in {seconds:.2f}s"])


class Agent:
    """Picks tools and their inputs; the workspace answers."""

    def __init__(self, rng: random.Random, session: int):
        self.rng = rng
        self.ws = Workspace(rng)
        # A session works on a handful of hot files (most reads and edits go there).
        self.hot = [f"src/app/{m}.py" for m in rng.sample(MODULES, 6)] + \
                   [f"tests/test_{m}.py" for m in rng.sample(MODULES, 3)]
        self.session = session

    def file(self) -> str:
        weights = [1.0 / (rank + 1) for rank in range(len(self.hot))]
        return self.rng.choices(self.hot, weights=weights)[0]

    def call(self, tool: str) -> tuple[str, Any, Any]:
        """(tool name, tool_input, tool_output)."""
        rng, ws = self.rng, self.ws
        if tool == "Read":
            path = self.file()
            return "Read", {"file_path": path}, ws.content(path)
        if tool in ("Edit", "Write"):
            path = self.file()
            ws.edit(path)
            old, new = rng.choice(WORDS), rng.choice(WORDS)
            if tool == "Write":
                return "Write", {"file_path": path, "content": ws.content(path)[:2000]}, f"File written: {path}"
            return "Edit", {"file_path": path, "old_string": old, "new_string": new}, \
                f"The file {path} has been updated."
        if tool == "Grep":
            word = rng.choice(WORDS)
            hits = [f"{p}:{rng.randint(1, 160)}:    {word} = ..." for p in self.hot if rng.random() < 0.5]
            return "Grep", {"pattern": word, "path": "src"}, "\n".join(hits) or "No matches found"
        if tool == "Glob":
            pattern = rng.choice(("src/**/*.py", "tests/**/*.py", "**/*.toml"))
            return "Glob", {"pattern": pattern}, "\n".join(self.hot)
        if tool == "Task":
            if rng.random() < 0.3:
                return "TaskCreate", {"subject": f"fix {rng.choice(WORDS)} handling"}, "Task created"
            status = rng.choice(("in_progress", "completed"))
            return "TaskUpdate", {"taskId": str(rng.randint(1, 6)), "status": status}, "Updated task"
        if tool == "WebSearch":
            query = f"python {rng.choice(WORDS)} {rng.choice(WORDS)} error"
            return "WebSearch", {"query": query}, f"1. Stack Overflow: {query}\n2. Python docs"
        return self.shell(_pick(rng, SHELL_MIX))

    def shell(self, kind: str) -> tuple[str, Any, Any]:
        rng, ws = self.rng, self.ws
        if kind == "test":
            target = rng.choice(["tests", *[p for p in self.hot if p.startswith("tests/")]])
            return "Bash", {"command": f"pytest {target} -q"}, ws.tests(target)
        if kind == "git":
            command = rng.choice(("git status --short", "git diff --stat", "git log --oneline -5"))
            if command == "git log --oneline -5":
                output = "\n".join(f"{rng.getrandbits(28):07x} {rng.choice(WORDS)} fix" for _ in range(5))
            else:
                output = "\n".join(f" M {p}" for p in ws.changed()) or "(nothing to commit)"
            return "Bash", {"command": command}, output
        if kind == "navigate":
            command = rng.choice(("ls", "pwd", "cd src && ls -la", "ls tests"))
            return "Bash", {"command": command}, "\n".join(self.hot) if "ls" in command else "/work/shop"
        script = rng.choice((f"python -m {rng.choice(MODULES)} --check", "make lint", "pip show requests",
                             f"python -c 'import app.{rng.choice(MODULES)}'"))
        return "Bash", {"command": script}, f"exit 0; {rng.randint(0, 10**6)} items checked"


def session_events(seed: int, session: int, tools: int = 100, prompts: int = 3,
                   day: str = "2026-11-02", hour: int = 9) -> list[dict[str, Any]]:
    """The hook payloads of one session: ``prompts`` user prompts spread over ``tools`` tool calls."""
    rng = random.Random(f"{seed}:{session}")
    agent = Agent(rng, session)
    sid = f"bench-s{session:03d}"
    at_prompt = {round(i * tools / prompts) for i in range(prompts)}
    events: list[dict[str, Any]] = []

    def stamp() -> str:
        n = len(events)
        return f"{day}T{hour + n // 3600:02d}:{(n // 60) % 60:02d}:{n % 60:02d}.000Z"

    for i in range(tools):
        if i in at_prompt:
            prompt = f"Please fix the {rng.choice(WORDS)} {rng.choice(WORDS)} bug in {rng.choice(MODULES)} (step {i})"
            events.append({"hookType": "prompt_submit", "sessionId": sid, "project": "shop", "cwd": "/work/shop",
                           "timestamp": stamp(), "data": {"prompt": prompt}})
        name, tool_input, output = agent.call(_pick(rng, TOOL_MIX))
        events.append({"hookType": "post_tool_use", "sessionId": sid, "project": "shop", "cwd": "/work/shop",
                       "timestamp": stamp(), "data": {"tool_name": name, "tool_input": tool_input,
                                                      "tool_output": output[:8000]}})
    return events


def composition(events: list[dict[str, Any]]) -> dict[str, int]:
    """Events per tool (and prompts), for the report."""
    counts: dict[str, int] = {}
    for e in events:
        data = e["data"]
        key = "prompt" if e["hookType"] == "prompt_submit" else data["tool_name"]
        if key == "Bash":
            command = data["tool_input"]["command"]
            key = "Bash " + ("pytest" if command.startswith("pytest") else command.split()[0])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
