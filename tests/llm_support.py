"""What the fake models answer in the LLM feature tests: a valid answer per task, recognised by
the task's system instruction (as a real model would read it), with overridable pieces. Works
with every fake (fake_gemini.py, fake_openai.py, fake_anthropic.py): a responder gets the
protocol-neutral ``Prompt``."""

from __future__ import annotations

import re
from typing import Any, Callable

from fake_http import Prompt

# Phrases of each task's system instruction (models/llm_steps.py, llm_compress.py, graph.py, llm.py).
TASK_PHRASES = (("compact memory record", "compress"), ("summarise one working session", "summarize"),
                ("distil finished work", "crystallize"), ("memory slots", "reflect"),
                ("insight behind each cluster", "insights"), ("into long-term memories", "consolidate"),
                ("extract a knowledge graph", "graph"), ("connectivity checks", "ping"))

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
    "ping": {"ok": True},
}


def task_of(prompt: Prompt) -> str:
    return next(task for phrase, task in TASK_PHRASES if phrase in prompt.system)


def _count(pattern: str, prompt: Prompt) -> int:
    return len(re.findall(pattern, prompt.user, re.MULTILINE))


def responder(**overrides: Any) -> Callable[[Prompt], Any]:
    """A responder for the fakes: ``overrides`` replace a task's answer (a value or a function
    of the ``Prompt``)."""

    def answer(prompt: Prompt) -> Any:
        task = task_of(prompt)
        if task in overrides:
            chosen = overrides[task]
            return chosen(prompt) if callable(chosen) else chosen
        if task == "insights":
            n = _count(r"^Cluster \d+ \(", prompt)
            return {"insights": [{"title": f"Model insight {i}", "content": f"Model insight content {i}.",
                                  "confidence": 0.7} for i in range(1, n + 1)]}
        if task == "consolidate":
            n = _count(r"^Group \d+ \(", prompt)
            return {"memories": [{"title": f"Model memory {i}", "content": f"Model memory content {i}.",
                                  "type": "pattern", "concepts": ["auth"],
                                  "facts": [f"The auth module uses tokens ({i})."]} for i in range(1, n + 1)]}
        return ANSWERS[task]

    return answer
