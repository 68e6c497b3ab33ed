"""One line about a record, from its title and its narrative, saying each thing once.

Capture writes both for every observation: a title ("Bash: cargo test", "Patch src/users.rs:
update") and a narrative, the sentence search indexes ("Ran `cargo test`", "Patched update
src/users.rs"). When the tool reported nothing, the narrative restates the title; the lines the
next session reads (the context block, the prompt's relevant records, a summary's steps, the
timeline) show it only when it adds something. Paths under the session's working directory are
named from it ("src/cart.ts"), as the agent names them (``paths_seen_from``).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w[\w./-]*")
_CLAUSE_END = re.compile(r"[:.] ")  # the end of a narrative's leading clause ("Ran `x`. Output: ...")

# The words capture's narratives put around what a title already says ("Ran `npm test`. Output:
# ...", "Edited src/a.ts in 1 place", "Patched update src/a.rs"; capture/describe.py).
CAPTURE_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "delegated",
        "edited",
        "fetched",
        "for",
        "in",
        "listed",
        "listing",
        "of",
        "output",
        "patched",
        "place",
        "places",
        "ran",
        "replaced",
        "searched",
        "searching",
        "the",
        "to",
        "with",
        "wrote",
    ]
)


def _words(text: str) -> list[str]:
    return [word.rstrip("./-") for word in _WORD.findall(text.lower())]


def restates(label: str, text: str) -> bool:
    """Whether ``text`` says no more than ``label``: it shares a word with it, and each of its
    words is the label's or one capture writes around them ("Ran `cargo test`" under "Bash:
    cargo test"). Any word of its own ("Killed", an exit code) is news."""
    said = set(_words(label))
    words = _words(text)
    return any(word in said for word in words) and all(word in said or word in CAPTURE_WORDS for word in words)


def _heads_dropped(label: str, narrative: str) -> str:
    """``narrative`` without the leading clauses (up to ": " or ". ") that only restate the label
    or are capture's own words: "Edited src/a.ts: `3` -> `5`" under "Edit src/a.ts" is "`3` -> `5`",
    "Ran `npm test`. Output: 2 passed" under "Bash: npm test" is "2 passed"."""
    said = set(_words(label))
    while (end := _CLAUSE_END.search(narrative)) is not None:
        head = _words(narrative[: end.start()])
        if not head or not all(word in said or word in CAPTURE_WORDS for word in head):
            break
        narrative = narrative[end.end() :]
    return narrative


def one_line(label: str, narrative: str) -> str:
    """``label: narrative`` on one line, without saying a thing twice: a narrative that begins
    with the label ("Read a.py: def f()" for "Read a.py") stands alone, one the label was cut
    from ("stop: Fixed the test…" for "Fixed the test and pushed") replaces the cut part, one
    that only restates the label is left out, and one that opens by restating it keeps the rest."""
    label, narrative = " ".join(label.split()), " ".join(narrative.split())
    if not narrative or narrative in label:  # "Read a.md -> failed: not found" and "not found"
        return label
    if narrative.startswith(label.rstrip("…")):
        return narrative
    at = label.find(narrative[:20]) if len(narrative) >= 20 else -1
    if at >= 0:
        return label[:at] + narrative
    return label if restates(label, narrative) else f"{label}: {_heads_dropped(label, narrative)}"


def paths_seen_from(cwd: str | None, text: str) -> str:
    """``text`` with every path under ``cwd`` named from it, as the agent would name it ("src/cart.ts",
    not "/home/ana/shop/src/cart.ts"); paths elsewhere stay as they are."""
    base = str(cwd or "").rstrip("/\\")
    if not base:
        return text
    # Only where a path starts: "/srv/x/home/ana/shop/a.ts" is not under "/home/ana/shop".
    return re.sub(rf"(?<![\w.~/\\-]){re.escape(base)}[/\\](?=\S)", "", text)


# A listing's pattern ("src/**/*.ts", "*.{js,ts}") is kept among an observation's files, as upstream
# keeps it, but names no file. Brackets are left alone: "app/[id]/page.tsx" is a real file.
_GLOB = re.compile(r"[*?]|\{[^}]*,[^}]*\}")


def file_as_named(cwd: str | None, path: str) -> str | None:
    """``path`` named from ``cwd`` as the agent names it; None for a pattern that lists files."""
    named = paths_seen_from(cwd, path)
    return None if _GLOB.search(named) else named


def files_as_named(obs: dict) -> list[str]:
    """An observation's files named from its working directory, as the agent names them
    ("src/cart.ts"): the same file counts once across clones, and no home folder is shown.
    Patterns that list files are not files and are left out."""
    named = (file_as_named(obs.get("cwd"), str(f)) for f in obs.get("files") or [])
    return list(dict.fromkeys(f for f in named if f))
