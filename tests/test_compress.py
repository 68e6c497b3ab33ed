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
