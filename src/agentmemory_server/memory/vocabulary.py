"""What is counted as a project's words: not this server's own writing, not where files live.

Concepts, recurring terms and reflection themes are counted from observations, summaries,
consolidated memories and crystals. Much of that text is written here, from templates: "Edit
src/a.py: replace 1 line", "Ran `npm test` (exit 1)", "6 observations across 3 session(s)". Its
words recur in every project and would outrank the project's own. So do the directories of an
absolute path ("/home/ana/code/shop/src/cart.ts" names home, ana, code and shop in every record
of that checkout), while the file's own name ("cart") says what the work was about.
"""

from __future__ import annotations

import re

# Words of the titles, narratives and summaries this server writes (capture/describe.py,
# compress.py, summaries.py, consolidate.py, crystals.py, client_hooks.py).
TEMPLATE_WORDS = frozenset(
    [
        "across",
        "asked",
        "changed",
        "delegated",
        "delete",
        "edited",
        "edits",
        "exit",
        "failed",
        "failing",
        "failure",
        "failures",
        "fetched",
        "highlights",
        "insert",
        "listed",
        "listing",
        "match",
        "matches",
        "notable",
        "observation",
        "observations",
        "passed",
        "passes",
        "patched",
        "places",
        "prompts",
        "recurring",
        "replace",
        "replaced",
        "searched",
        "searching",
        "sessions",
        "still",
        "wrote",
    ]
)

# A path of two or more parts (absolute, relative, home-based or a Windows drive's, with either
# separator), up to its last part.
_PATH = re.compile(r"(?:~|\.{1,2}|[A-Za-z]:)?[/\\]?(?:[\w.@+-]+[/\\])+(?=[\w.@+-])")


def file_names_only(text: str) -> str:
    """``text`` with every path cut to its last part: "/home/ana/shop/src/cart.ts" -> "cart.ts"."""
    return _PATH.sub("", text)
