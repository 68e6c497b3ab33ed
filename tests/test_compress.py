"""Synthetic compression (U§4.3) of hook events."""

import pytest

from agentmemory_server.capture.compress import classify, extract_files, synthetic_compression


@pytest.mark.parametrize("hook,tool,expected", [
    ("post_tool_use", "WebFetch", "web_fetch"),
    ("post_tool_use", "Grep", "search"),
    ("post_tool_use", "Glob", "search"),
    ("post_tool_use", "Bash", "command_run"),
    ("post_tool_use", "Edit", "file_edit"),
    ("post_tool_use", "MultiEdit", "file_edit"),
    ("post_tool_use", "Write", "file_write"),
    ("post_tool_use", "Read", "file_read"),
    ("post_tool_use", "Task", "subagent"),
    ("post_tool_use", "mystery-tool", "other"),
    ("post_tool_use", None, "other"),
    ("post_tool_failure", "Bash", "error"),
    ("prompt_submit", None, "conversation"),
    ("subagent_stop", None, "subagent"),
    ("task_completed", None, "subagent"),
    ("notification", None, "notification"),
])
def test_classify(hook, tool, expected):
    assert classify(hook, tool) == expected


def test_tool_event_fields():
    c = synthetic_compression("post_tool_use", {
        "tool_name": "Edit", "tool_input": {"file_path": "src/app.py", "old_string": "a"},
        "tool_output": "ok"})
    assert c["type"] == "file_edit" and c["title"] == "Edit src/app.py: delete 1 line"
    assert c["files"] == ["src/app.py"] and c["toolName"] == "Edit"
    assert c["subtitle"].startswith("{") and "src/app.py" in c["narrative"]
    assert c["facts"] == [] and c["concepts"] == [] and c["confidence"] == 0.3


def test_prompt_becomes_title_and_long_text_is_truncated():
    c = synthetic_compression("prompt_submit", {"prompt": "word " * 300})
    assert c["type"] == "conversation"
    assert len(c["title"]) == 80 and c["title"].endswith("…")
    assert len(c["narrative"]) == 400 and c["narrative"].endswith("…")


@pytest.mark.parametrize("hook,data,title", [
    ("notification", {"notification_type": "idle_prompt", "message": "Claude is waiting for your input"},
     "notification: Claude is waiting for your input"),
    ("stop", {"message": "Fixed the flaky parser test\nand pushed the branch"},
     "stop: Fixed the flaky parser test and pushed the branch"),
    ("stop_failure", {"error_type": "rate_limit", "message": "rate limited"}, "stop_failure: rate limited"),
    ("notification", {"title": "Permission needed", "message": "Claude needs your permission to use Bash"},
     "notification: Permission needed"),
    ("notification", {"notification_type": "idle_prompt"}, "notification"),
    ("stop", {}, "stop"),
    # the line a native hook route writes for an event with nothing to say is not the agent's words
    ("session_start", {"hook_event_name": "SessionStart", "event_note": "SessionStart (startup)"}, "session_start"),
    ("post_tool_failure", "lint failed: eslint not found", "post_tool_failure: lint failed: eslint not found"),
])
def test_an_event_without_a_tool_or_prompt_is_titled_by_what_it_says(hook, data, title):
    assert synthetic_compression(hook, data)["title"] == title


def test_failure_output_and_importance():
    c = synthetic_compression("post_tool_failure", {"tool_name": "Bash", "tool_input": "make",
                                                    "error": "exit 2"})
    assert c["type"] == "error" and "exit 2" in c["narrative"] and c["importance"] > 5


def test_files_are_distinct_and_bounded():
    assert extract_files({"path": "a", "file": "a", "pattern": "*.py"}) == ["a", "*.py"]
    assert extract_files({"file_path": "x" * 600}) == []
    assert extract_files("not a dict") == []


def test_agent_note():
    c = synthetic_compression("observation", {"content": "Decided to use WAL mode", "type": "decision",
                                              "files": ["src/db.py"]})
    assert c["type"] == "decision" and c["title"] == "Decided to use WAL mode"
    assert c["files"] == ["src/db.py"]


@pytest.mark.parametrize("hook_type,data,title,narrative", [
    ("post_tool_use", {"tool_name": "Edit", "tool_input": {"file_path": "src/auth/login.py",
                                                          "old_string": "a\n" * 12, "new_string": "b\n" * 12}},
     "Edit src/auth/login.py: replace 12 lines", "Edited src/auth/login.py: `a` -> `b`"),
    ("post_tool_use", {"tool_name": "Edit", "tool_input": {"file_path": "x.py", "old_string": "a\nb",
                                                          "new_string": "a\nb\nc\nd"}},
     "Edit x.py: replace 2 lines with 4", "Edited x.py"),
    ("post_tool_use", {"tool_name": "MultiEdit", "tool_input": {"file_path": "x.py", "edits": [
        {"old_string": "a", "new_string": "b"}, {"old_string": "c\nd", "new_string": "e"}]}},
     "Edit x.py: 2 edits, 3 lines replaced", "Edited x.py in 2 places"),
    ("post_tool_failure", {"tool_name": "Bash", "tool_input": {"command": "pytest tests/test_auth.py"},
                           "error": "Exit code 1\n==== 3 failed, 12 passed in 2.1s ===="},
     "Bash: pytest tests/test_auth.py -> exit 1, 3 failed, 12 passed", "Ran `pytest tests/test_auth.py` (exit 1"),
    ("post_tool_use", {"tool_name": "Bash", "tool_input": {"command": "ls -la"},
                       "tool_response": {"stdout": "a\nb", "stderr": "", "interrupted": False}},
     "Bash: ls -la", "Ran `ls -la`. Output: a\nb"),
    ("post_tool_use", {"tool_name": "Write", "tool_input": {"file_path": "notes.md", "content": "# Title\nbody\n"}},
     "Write notes.md: 2 lines", "Wrote notes.md (2 lines): # Title"),
    ("post_tool_use", {"tool_name": "Read", "tool_input": {"file_path": "a.py", "offset": 10, "limit": 20},
                       "tool_response": "import os"}, "Read a.py lines 10-30", "Read a.py lines 10-30: import os"),
    ("post_tool_use", {"tool_name": "Grep", "tool_input": {"pattern": "TODO", "path": "src"},
                       "tool_response": "src/a.py:3:TODO x\nsrc/b.py:9:TODO y"},
     "Grep 'TODO' in src: 2 matches", "Searched for `TODO` in src: 2 matches: src/a.py:3:TODO x"),
    ("post_tool_use", {"tool_name": "Glob", "tool_input": {"pattern": "**/*.py"}, "tool_response": "a.py\nb.py"},
     "Glob **/*.py: 2 files", "Listed **/*.py: 2 files: a.py, b.py"),
    ("post_tool_use", {"tool_name": "Task", "tool_input": {"description": "Review the auth module",
                                                          "subagent_type": "reviewer"}},
     "Task (reviewer): Review the auth module", "Delegated to reviewer: Review the auth module"),
    ("post_tool_use", {"tool_name": "TodoWrite", "tool_input": {"todos": [
        {"content": "write tests", "status": "completed"}, {"content": "fix bug", "status": "pending"}]}},
     "TodoWrite: 2 todos, 1 done", "Todo list: [completed] write tests; [pending] fix bug"),
    ("post_tool_use", {"tool_name": "mcp__github__create_issue", "tool_input": {"title": "Crash on start"},
                       "tool_response": "created #12"},
     "mcp__github__create_issue: Crash on start", "mcp__github__create_issue {\"title\":\"Crash on start\"} -> created #12"),
])
def test_tool_observations_say_what_happened(hook_type, data, title, narrative):
    c = synthetic_compression(hook_type, data)
    assert c["title"] == title and c["narrative"].startswith(narrative)
    assert len(c["title"]) <= 80


# What Claude Code sends as tool_response for its search and read tools (objects, not text).
CLAUDE_SHAPES = [
    ("Grep", {"pattern": "def total", "path": "src"},
     {"mode": "files_with_matches", "filenames": ["src/cart.py", "src/tax.py"], "numFiles": 2},
     "Grep 'def total' in src: 2 files", "Searched for `def total` in src: 2 files: src/cart.py; src/tax.py"),
    ("Grep", {"pattern": "TODO", "output_mode": "content"},
     {"mode": "content", "filenames": [], "numFiles": 0, "content": "a.py:3:# TODO x\nb.py:9:# TODO y", "numLines": 2},
     "Grep 'TODO': 2 matches", "Searched for `TODO`: 2 matches: a.py:3:# TODO x; b.py:9:# TODO y"),
    ("Grep", {"pattern": "TODO", "output_mode": "count"},
     {"mode": "count", "filenames": [], "numFiles": 3, "content": "a.py:4\nb.py:3", "numMatches": 7},
     "Grep 'TODO': 7 matches", "Searched for `TODO`: 7 matches"),
    ("Grep", {"pattern": "TODO"}, {"mode": "files_with_matches", "filenames": ["a.py"], "numFiles": 1},
     "Grep 'TODO': 1 file", "Searched for `TODO`: 1 file: a.py"),
    ("Glob", {"pattern": "**/*.py"}, {"filenames": ["a.py", "b.py"], "numFiles": 2, "truncated": False, "durationMs": 4},
     "Glob **/*.py: 2 files", "Listed **/*.py: 2 files: a.py, b.py"),
    ("Read", {"file_path": "src/cart.py"},
     {"type": "text", "file": {"filePath": "src/cart.py", "content": "def total(items):\n    return 0\n",
                               "numLines": 2, "startLine": 1, "totalLines": 2}},
     "Read src/cart.py", "Read src/cart.py: def total(items):"),
]


@pytest.mark.parametrize("tool,tool_input,response,title,narrative", CLAUDE_SHAPES)
def test_claude_code_tool_responses_are_read_as_what_they_hold(tool, tool_input, response, title, narrative):
    c = synthetic_compression("post_tool_use", {"tool_name": tool, "tool_input": tool_input, "tool_response": response})
    assert c["title"] == title and c["narrative"].startswith(narrative), (c["title"], c["narrative"])
    assert "{" not in c["narrative"]


PATCH = """*** Begin Patch
*** Update File: src/users.rs
@@ fn list
-    let page = 1;
+    let page = params.page.unwrap_or(1);
+    let size = params.size.unwrap_or(50);
*** Add File: src/pagination.rs
+pub struct Page;
*** End Patch
"""


# The same tools under other agents' names and shapes: described as Claude Code's are.
OTHER_AGENTS = [
    ("apply_patch", {"command": PATCH}, "Success. Updated the following files:\nM src/users.rs\nA src/pagination.rs",
     "Patch 2 files: src/users.rs, src/pagination.rs", "Patched update src/users.rs; add src/pagination.rs (+3 -1)",
     ["src/users.rs", "src/pagination.rs"]),
    ("apply_patch", {"command": "*** Begin Patch\n*** Delete File: old.py\n*** End Patch\n"}, "Done",
     "Patch old.py: delete", "Patched delete old.py", ["old.py"]),
    ("run_shell_command", {"command": "pytest -q"}, {"llmContent": "1 failed, 4 passed", "returnDisplay": "..."},
     "Bash: pytest -q -> 1 failed, 4 passed", "Ran `pytest -q` (1 failed, 4 passed)", []),
    ("read_file", {"absolute_path": "/srv/app/main.tf"}, {"llmContent": "resource \"x\" {}", "returnDisplay": ""},
     "Read /srv/app/main.tf", 'Read /srv/app/main.tf: resource "x" {}', ["/srv/app/main.tf"]),
    ("replace", {"file_path": "a.go", "old_string": "x := 1", "new_string": "x := 2"}, {"llmContent": "ok"},
     "Edit a.go: replace 1 line", "Edited a.go: `x := 1` -> `x := 2`", ["a.go"]),
    ("run_terminal_cmd", {"command": "npm test"}, {"output": "Tests: 2 failed, 9 passed", "exitCode": 1},
     "Bash: npm test -> exit 1, 2 failed, 9 passed", "Ran `npm test` (exit 1, 2 failed, 9 passed)", []),
    ("edit", {"path": "src/footer.html", "old_str": "2025", "new_str": "2026"}, "ok",
     "Edit src/footer.html: replace 1 line", "Edited src/footer.html: `2025` -> `2026`", ["src/footer.html"]),
    ("search_files", {"path": "src", "regex": "TODO"}, "src/a.ts:3: // TODO\nsrc/b.ts:7: // TODO",
     "Grep 'TODO' in src: 2 matches", "Searched for `TODO` in src: 2 matches", []),
    ("execute_command", {"command": "cargo build"}, "Finished dev profile",
     "Bash: cargo build", "Ran `cargo build`. Output: Finished dev profile", []),
    # MCP tools and subagents answer with content blocks
    ("mcp__github__create_issue", {"title": "Crash on start"}, {"content": [{"type": "text", "text": "created #12"}]},
     "mcp__github__create_issue: Crash on start", 'mcp__github__create_issue {"title":"Crash on start"} -> created #12',
     []),
    ("mcp__db__query", {"sql": "select 1"}, [{"type": "text", "text": "1 row"}],
     "mcp__db__query: select 1", 'mcp__db__query {"sql":"select 1"} -> 1 row', []),
]


@pytest.mark.parametrize("tool,tool_input,response,title,narrative,files", OTHER_AGENTS)
def test_other_agents_tools_are_described_like_claude_codes(tool, tool_input, response, title, narrative, files):
    c = synthetic_compression("post_tool_use", {"tool_name": tool, "tool_input": tool_input, "tool_response": response})
    assert (c["title"], c["files"]) == (title, files) and c["narrative"].startswith(narrative), c


def test_a_search_about_to_run_claims_no_result():
    c = synthetic_compression("pre_tool_use", {"tool_name": "Grep", "tool_input": {"pattern": "def total", "path": "src"}})
    assert c["title"] == "Grep 'def total' in src" and c["narrative"] == "Searching for `def total` in src"
    c = synthetic_compression("pre_tool_use", {"tool_name": "Glob", "tool_input": {"pattern": "*.md"}})
    assert c["title"] == "Glob *.md"


def test_a_text_searchs_pattern_is_not_a_file_but_a_globs_is():
    grep = synthetic_compression("post_tool_use", {"tool_name": "Grep", "tool_input": {"pattern": "def total", "path": "src"},
                                                   "tool_response": "src/cart.py:1:def total"})
    assert grep["files"] == []  # "src" is where it looked, "def total" what it looked for
    glob = synthetic_compression("post_tool_use", {"tool_name": "Glob", "tool_input": {"pattern": "src/**/*.py"},
                                                   "tool_response": "src/a.py"})
    assert glob["files"] == ["src/**/*.py"]
    assert extract_files({"pattern": "TODO"}, "mcp__code__search_code") == []


def test_a_long_command_gives_way_to_its_outcome_in_the_title():
    c = synthetic_compression("post_tool_use", {"tool_name": "Bash", "tool_input": {"command": "pytest " + "x/" * 80},
                                                "tool_response": {"stdout": "1 failed, 2 passed", "exit_code": 1}})
    assert len(c["title"]) <= 80 and c["title"].endswith("-> exit 1, 1 failed, 2 passed")


def test_odd_inputs_fall_back_to_the_generic_form():
    c = synthetic_compression("post_tool_use", {"tool_name": "Edit", "tool_input": "not a dict"})
    assert c["title"] == "Edit: not a dict"
    c = synthetic_compression("post_tool_use", {"tool_name": "Bash", "tool_input": {"command": 42}})
    assert c["title"].startswith("Bash")
