"""What is counted as a project's words: not this server's own writing, not where files live.

Concepts, recurring terms and reflection themes are counted from observations, summaries,
consolidated memories and crystals. Much of that text is written here, from templates: "Edit
src/a.py: replace 1 line", "Ran `npm test` (exit 1)", "6 observations across 3 sessions". Its
words recur in every project and would outrank the project's own. So do the directories of an
absolute path ("/home/ana/code/shop/src/cart.ts" names home, ana, code and shop in every record
of that checkout), while the file's own name ("cart") says what the work was about.
"""

from __future__ import annotations

import re

from agentmemory_server.kernel.hook_types import KNOWN_HOOK_TYPES
from agentmemory_server.retrieval.stopwords import STOPWORDS

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
        "line",
        "lines",
        "listed",
        "listing",
        "match",
        "matches",
        "notable",
        "observation",
        "observations",
        "output",
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

# Words that describe every coding session, so say nothing about one project.
GENERIC_WORDS = frozenset(
    [
        "also",
        "file",
        "files",
        "line",
        "lines",
        "tool",
        "tools",
        "true",
        "false",
        "none",
        "null",
        "error",
        "errors",
        "output",
        "input",
        "result",
        "results",
        "value",
        "values",
        "text",
        "code",
        "test",
        "tests",
        "using",
        "used",
        "use",
        "make",
        "made",
        "need",
        "needs",
        "new",
        "get",
        "set",
        "run",
        "runs",
        "ran",
        "done",
        "just",
        "like",
        "want",
        "sure",
        "okay",
        "yes",
        "let",
        "see",
        "look",
        "thing",
        "things",
        "work",
        "works",
        "working",
        "change",
        "changes",
        "changed",
        "add",
        "added",
        "update",
        "updated",
        "read",
        "write",
        "edit",
        "bash",
        "grep",
        "glob",
        "task",
        "command",
        "content",
        "session",
        "prompt",
        "user",
        "assistant",
        "http",
        "https",
        "www",
        "com",
        "json",
        "path",
        "data",
        "string",
        "number",
        "type",
    ]
)
# The keywords of common programming languages: a file's content (a Write, a Read) is code, and
# its keywords are in every project of that language.
CODE_KEYWORDS = frozenset(
    [
        "abstract",
        "async",
        "await",
        "boolean",
        "break",
        "case",
        "catch",
        "char",
        "class",
        "const",
        "continue",
        "def",
        "default",
        "defer",
        "del",
        "elif",
        "else",
        "enum",
        "except",
        "export",
        "extends",
        "final",
        "finally",
        "func",
        "function",
        "impl",
        "implements",
        "import",
        "interface",
        "lambda",
        "nil",
        "nonlocal",
        "package",
        "print",
        "private",
        "protected",
        "public",
        "raise",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "switch",
        "this",
        "throw",
        "throws",
        "trait",
        "typeof",
        "undefined",
        "var",
        "void",
        "while",
        "yield",
    ]
)
# What a failed command's output says in every project ("Command exited with non-zero status").
GENERIC_WORDS = GENERIC_WORDS | frozenset({"exited", "non-zero", "nonzero"})
# The courtesies prompts open and close with in every project ("Please fix ...", "thanks!"): a
# consolidation run over one project's prompts made a memory "Recurring 'please'" of them.
GENERIC_WORDS = GENERIC_WORDS | frozenset({"please", "thanks", "thank", "hello"})
# What concepts, recurring terms and themes leave out. The hook types head the titles of events
# without a tool ("session_start: Add a --verbose flag", "stop: Fixed the test").
NOISE = STOPWORDS | TEMPLATE_WORDS | GENERIC_WORDS | CODE_KEYWORDS | KNOWN_HOOK_TYPES

# A path of two or more parts (absolute, relative, home-based or a Windows drive's, with either
# separator), up to its last part.
_PATH = re.compile(r"(?:~|\.{1,2}|[A-Za-z]:)?[/\\]?(?:[\w.@+-]+[/\\])+(?=[\w.@+-])")


def file_names_only(text: str) -> str:
    """``text`` with every path cut to its last part: "/home/ana/shop/src/cart.ts" -> "cart.ts"."""
    return _PATH.sub("", text)
