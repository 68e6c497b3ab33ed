"""What the fake Gemini answers in the LLM feature tests: a valid answer per task, recognised by
the task's system instruction (as a real model would read it), with overridable pieces."""

from __future__ import annotations

import re
from typing import Any, Callable

# Phrases of each task's system instruction (src/llm_steps.py, src/graph.py).
TASK_PHRASES = (("compact memory record", "compress"), ("summarise one working session", "summarize"),
                ("distil finished work", "crystallize"), ("memory slots", "reflect"),
                ("insight behind each cluster", "insights"), ("into long-term memories", "consolidate"),
                ("extract a knowledge graph", "graph"))

ANSWERS: dict[str, Any] = {
    "compress": {"type": "decision", "title": "Model: switched auth to tokens", "facts": ["auth uses tokens now"],
                 "narrative": "The agent moved login to token auth.", "concepts": ["Zanzibar-Auth", "oauth"],
                 "files": ["src/model_file.py"], "importance": 9},
    "summarize": {"title": "Model summary title", "narrative": "The model summarised the session.",
                  "keyDecisions": ["use tokens"], "filesModified": ["src/auth.py"], "concepts": ["oauth"]},
    "crystallize": {"narrative": "Model crystal narrative.", "keyOutcomes": ["login works"],
                    "filesAffected": ["src/auth.py"], "lessons": ["Run the auth tests after editing tokens."]},
    "reflect": {"slots": {"pending_items": "- model pending item"}},
    "graph": {"entities": [{"name": "src/auth.py", "type": "file"}, {"name": "PyJWT", "type": "library"},
                           {"name": "token expiry", "type": "concept"}],
              "relations": [{"source": "src/auth.py", "target": "PyJWT", "type": "uses"},
                            {"source": "src/auth.py", "target": "token expiry", "type": "related_to"}]},
}


def task_of(body: dict[str, Any]) -> str:
    system = body["systemInstruction"]["parts"][0]["text"]
    return next(task for phrase, task in TASK_PHRASES if phrase in system)


def _count(pattern: str, body: dict[str, Any]) -> int:
    return len(re.findall(pattern, body["contents"][0]["parts"][0]["text"], re.MULTILINE))


def responder(**overrides: Any) -> Callable[[dict[str, Any]], Any]:
    """A responder for FakeGemini: ``overrides`` replace a task's answer (a value or a function
    of the request body)."""

    def answer(body: dict[str, Any]) -> Any:
        task = task_of(body)
        if task in overrides:
            chosen = overrides[task]
            return chosen(body) if callable(chosen) else chosen
        if task == "insights":
            n = _count(r"^Cluster \d+ \(", body)
            return {"insights": [{"title": f"Model insight {i}", "content": f"Model insight content {i}.",
                                  "confidence": 0.7} for i in range(1, n + 1)]}
        if task == "consolidate":
            n = _count(r"^Group \d+ \(", body)
            return {"memories": [{"title": f"Model memory {i}", "content": f"Model memory content {i}.",
                                  "type": "pattern", "concepts": ["auth"],
                                  "facts": [f"The auth module uses tokens ({i})."]} for i in range(1, n + 1)]}
        return ANSWERS[task]

    return answer
