"""Session summaries without a language model, written when a session ends.

A summary is built from the session's observations alone: what kind of work happened (counts
per type), what was asked, which files changed, the errors, the decisions the agent noted and
the terms that kept coming up. It is stored in ``mem:summaries`` (upstream's SessionSummary
shape), so ``/sessions`` and the context block always have one. A model step registered for
``summarize`` (see model_steps.py) may write a better one; this is the fallback that always works.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import Conflict, NotFound
from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter, visible_to
from agentmemory_server.kernel.model_steps import SYNTHETIC, run_model_steps, written_by
from agentmemory_server.kernel.registry import SESSION_ID, Ctx, params, tool
from agentmemory_server.kernel.scopes import SESSIONS, SUMMARIES
from agentmemory_server.kernel.util import parse_time, stringify, tool_output_text, truncate
from agentmemory_server.kernel.wording import one_line, paths_seen_from
from agentmemory_server.memory.vocabulary import NOISE, file_names_only
from agentmemory_server.retrieval.search import LIFECYCLE_HOOKS

log = logging.getLogger("agentmemory.summaries")
MAX_OBSERVATIONS = 5000
_TYPE_LABELS = {
    "command_run": "command",
    "file_edit": "edit",
    "file_write": "file write",
    "file_read": "read",
    "search": "search",
    "error": "error",
    "conversation": "prompt",
    "agent_speech": "agent message",
    "web_fetch": "web fetch",
    "subagent": "subagent event",
    "decision": "decision",
    "discovery": "discovery",
    "notification": "notification",
    "task": "task",
}
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{3,}")
_FAILED_OUTPUT = re.compile(
    r"\b(\d+ failed|failed with|error:|exception|traceback|exit (?:code|status) [1-9]"
    r"|command not found|no such file)",
    re.IGNORECASE,
)
_NOISE = frozenset(
    [
        "true",
        "false",
        "null",
        "none",
        "tool_name",
        "tool_input",
        "tool_output",
        "command",
        "file_path",
        "content",
        "description",
    ]
)


# -- reading a session ------------------------------------------------------------------------------


def load_session(ctx: Ctx, store, session_id: str) -> dict[str, Any]:
    session = store.records.get(SESSIONS, session_id)
    if not visible_to(ctx, session):
        raise NotFound(f"session {session_id!r} not found", code=errors.SESSION_NOT_FOUND)
    return session


def session_observations(ctx: Ctx, store, session_id: str, last: int | None = None) -> list[dict]:
    """The session's observations in time order (only the ``last`` n when given)."""
    agent = agent_filter(ctx)
    _items, total = listings.observations_page(store, session_id, limit=1, offset=0, agent_id=agent)
    limit = min(last or MAX_OBSERVATIONS, MAX_OBSERVATIONS)
    items, _ = listings.observations_page(store, session_id, limit=limit, offset=max(0, total - limit), agent_id=agent)
    return items


# -- facts about a list of observations ----------------------------------------------------------------


# Hooks that announce a tool call before it runs: what they name has not happened yet.
INTENT_HOOKS = frozenset({"pre_tool_use", "permission_request"})


def is_lifecycle(obs: dict[str, Any]) -> bool:
    """A session start, turn end, session end or compaction, as captured (not retyped by a model)."""
    return obs.get("hookType") in LIFECYCLE_HOOKS and (obs.get("type") or "other") == "other"


def is_work(obs: dict[str, Any]) -> bool:
    """Something done in the session: not its course (lifecycle) nor a tool call announced before
    it ran (its post_tool_use, when the client sends one, is the work)."""
    return not is_lifecycle(obs) and obs.get("hookType") not in INTENT_HOOKS


def is_failure(obs: dict[str, Any]) -> bool:
    """An error event, or a command whose output says it failed."""
    return obs.get("type") == "error" or (
        obs.get("type") == "command_run" and bool(_FAILED_OUTPUT.search(obs.get("narrative") or ""))
    )


def step_key(obs: dict[str, Any]) -> tuple[str, str] | None:
    """What was run (tool + input), to pair a failure with a later success of the same step."""
    if not obs.get("toolName") or not obs.get("subtitle"):
        return None
    return obs["toolName"], obs["subtitle"]


def step_label(obs: dict[str, Any]) -> str:
    raw: dict[str, Any] = obs["raw"] if isinstance(obs.get("raw"), dict) else {}
    tool_input: dict[str, Any] = raw["tool_input"] if isinstance(raw.get("tool_input"), dict) else {}
    command = tool_input.get("command") if isinstance(tool_input.get("command"), str) else None
    if command is None and obs.get("subtitle"):
        try:
            parsed = json.loads(obs["subtitle"])
            command = parsed.get("command") if isinstance(parsed, dict) else None
        except ValueError:
            command = None
        if not isinstance(command, str):  # a client's odd input ({"command": true}) names no command
            command = None
    # a command as it was typed; else the title capture wrote ("Edit src/a.py: replace 2 lines",
    # "Patch src/a.rs: update"), not the subtitle, which is the tool's input as JSON (and Codex's
    # apply_patch carries its whole patch as ``command``)
    ran = obs.get("type") in ("command_run", "error") and "patch" not in str(obs.get("toolName") or "").lower()
    if not ran:
        command = None
    return truncate(" ".join((command or obs.get("title") or obs.get("subtitle") or "").split()), 80)


_OUTPUT_KEYS = ("tool_output", "tool_response", "error", "tool_result")
_MESSAGE_KEYS = ("last_message", "message", "task_description")


def outcome_text(obs: dict[str, Any]) -> str:
    """What came of a step: a tool's output (and message) from the stored hook data, nothing
    when a tool reported nothing (unless a model wrote its narrative), else the narrative
    without the tool input it starts with (the input is the step's label)."""
    raw = obs.get("raw")
    if obs.get("toolName") and isinstance(raw, dict):
        output = next((raw[k] for k in _OUTPUT_KEYS if raw.get(k) not in (None, "")), None)
        message = next((raw[k] for k in _MESSAGE_KEYS if raw.get(k)), None)
        # the output's text (a command's stdout and stderr), not its JSON: an edit's answer holds
        # only the file again, and says nothing a summary needs
        said = (tool_output_text(output, as_json=False).strip(), stringify(message))
        text = " | ".join(p for p in said if p)
        if text:
            return truncate(text, 400)
        if output is not None or not obs.get("method"):
            # nothing came back (Cursor's afterFileEdit) and no model wrote the narrative: it
            # restates the title ("Edited src/a.ts in 1 place" under "Edit src/a.ts: 1 edit")
            return ""
    narrative = obs.get("narrative") or ""
    subtitle = obs.get("subtitle")
    if subtitle and narrative.startswith(subtitle + " | "):
        narrative = narrative[len(subtitle) + 3 :]
    return narrative


def describe(obs: dict[str, Any], limit: int = 160, cwd: str | None = None) -> str:
    """One line about an observation: what ran (or was said) and what came of it, with the
    paths under ``cwd`` (the session's working directory) named from it."""
    label = step_label(obs) if obs.get("toolName") else obs.get("title", "")
    return truncate(paths_seen_from(cwd, one_line(label, outcome_text(obs))), limit)


# What the agent itself said or thought (Cursor's afterAgentResponse / afterAgentThought) is a
# conversation observation like a prompt, but nobody asked it: it is not counted as a prompt.
AGENT_SPEECH = frozenset({"assistant_response", "agent_thought"})


def kind_of(obs: dict[str, Any]) -> str:
    """An observation's type, with the agent's own words told apart from the prompts."""
    obs_type = obs.get("type") or "other"
    return "agent_speech" if obs_type == "conversation" and obs.get("hookType") in AGENT_SPEECH else obs_type


def files_changed(observations: list[dict]) -> list[str]:
    files = [
        f
        for o in observations
        if o.get("type") in ("file_edit", "file_write") and is_work(o)
        for f in o.get("files") or []
    ]
    return list(dict.fromkeys(files))


def files_touched(observations: list[dict]) -> list[str]:
    return list(dict.fromkeys(f for o in observations for f in o.get("files") or []))


def top_terms(observations: list[dict], n: int = 8) -> list[str]:
    """Words that recur in at least two observations (stop words and JSON noise left out)."""
    counts: Counter[str] = Counter()
    tools = {str(o["toolName"]).lower() for o in observations if o.get("toolName")}
    for o in observations:
        # Each word once per observation, in the order it first appears: ties in the count keep
        # that order, the same in every process (a set's order changes with the hash seed).
        text = file_names_only(f"{o.get('title', '')} {o.get('narrative', '')}")
        words = dict.fromkeys(w.lower() for w in _WORD.findall(text))
        counts.update(w for w in words if w not in NOISE and w not in _NOISE and w not in tools)
    return [w for w, c in counts.most_common(n * 3) if c >= 2][:n]


def _duration(observations: list[dict]) -> str:
    start, end = (parse_time(observations[i].get("timestamp") or "") for i in (0, -1))
    if not start or not end or end <= start:
        return ""
    minutes = int((end - start).total_seconds() // 60)
    if minutes == 0:
        return " in under a minute"
    return f" over {minutes // 60} h {minutes % 60} min" if minutes >= 60 else f" over {minutes} min"


def type_counts(observations: list[dict], most: int = 5) -> str:
    """The commonest kinds of observation in plain words: "3 commands, 2 edits"."""
    counts = Counter(kind_of(o) for o in observations if is_work(o))
    parts = []
    for obs_type, count in counts.most_common(most):
        label = _TYPE_LABELS.get(obs_type, obs_type)
        parts.append(plural(count, label))
    return ", ".join(parts)


def course_counts(observations: list[dict]) -> str:
    """What the count of observations holds beside the work: "4 session events and 1 announced
    tool call" (starts, compactions, turn and session ends; tool calls announced before they ran)."""
    lifecycle = sum(1 for o in observations if is_lifecycle(o))
    announced = sum(1 for o in observations if not is_lifecycle(o) and o.get("hookType") in INTENT_HOOKS)
    parts = [plural(lifecycle, "session event"), plural(announced, "announced tool call")]
    return " and ".join(part for part, count in zip(parts, (lifecycle, announced), strict=True) if count)


def says_nothing(obs: dict[str, Any]) -> bool:
    """An event without a tool that carried no words of its own: its narrative is only the note
    capture wrote for it (capture/client_hooks.described), such as Cline's "TaskComplete"."""
    raw = obs.get("raw")
    return not obs.get("toolName") and isinstance(raw, dict) and "event_note" in raw


def plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return f"{count} {noun[:-1]}ies"  # discovery -> discoveries
    return f"{count} {noun}{'es' if noun.endswith(('s', 'sh', 'ch')) else 's'}"


def changed_files(changed: list[str], cwd: str | None, shown: int) -> str:
    """The changed-files sentence ("Changed 8 files: a, b, c (+5 more)"): the count, the first
    ``shown`` named from ``cwd``, and how many the list leaves out, so that a short list is not
    read as the whole change."""
    named = [paths_seen_from(cwd, f) for f in changed[:shown]]
    rest = f" (+{len(changed) - shown} more)" if len(changed) > shown else ""
    return f"Changed {plural(len(changed), 'file')}: {', '.join(named)}{rest}"


def synthetic_summary(session: dict[str, Any], observations: list[dict]) -> dict[str, Any]:
    """title, narrative, keyDecisions, filesModified and concepts from the observations alone."""
    prompts = [o.get("title", "") for o in observations if kind_of(o) == "conversation" and o.get("title")]
    changed = files_changed(observations)
    cwd = session.get("cwd")  # paths under it are named from it, as the agent names them
    errors = [o for o in observations if is_failure(o)]
    title = session.get("title") or session.get("firstPrompt") or (prompts[0] if prompts else "")
    if not title:
        title = f"Session {session['id'][:8]}: {type_counts(observations) or 'no activity'}"
    kinds, course = type_counts(observations), course_counts(observations)
    if kinds and course:
        kinds += f" (plus {course})"
    parts = [
        f"{plural(len(observations), 'observation')}{_duration(observations)}"
        + (f": {kinds or course}." if kinds or course else ".")
    ]
    if prompts:
        more = f" (+{plural(len(prompts) - 1, 'more prompt')})" if len(prompts) > 1 else ""
        parts.append(f'Asked: "{truncate(prompts[0], 160)}"{more}.')
    if changed:
        parts.append(changed_files(changed, cwd, shown=6) + ".")
    if errors:
        parts.append(f"{plural(len(errors), 'failure')}; last: {describe(errors[-1], cwd=cwd)}.")
    if notable := _notable(observations):
        parts.append("Notable: " + "; ".join(describe(o, 120, cwd) for o in notable).rstrip(".") + ".")
    decisions = [o.get("title", "") for o in observations if o.get("type") in ("decision", "discovery")]
    return {
        "title": truncate(" ".join(title.split()), 80),
        "narrative": " ".join(parts),
        "keyDecisions": [truncate(d, 200) for d in decisions[:10]],
        "filesModified": changed[:30],
        "concepts": _concepts(observations),
    }


def _notable(observations: list[dict]) -> list[dict]:
    """The three most important observations of real work that did not fail and say something."""
    return sorted(
        (
            o
            for o in observations
            if not is_failure(o)
            and o.get("type") not in ("conversation", "notification")
            and is_work(o)
            and not says_nothing(o)
        ),
        key=lambda o: -int(o.get("importance") or 0),
    )[:3]


def _concepts(observations: list[dict]) -> list[str]:
    """The observations' own concepts, then their top terms; twelve at most, each once."""
    return list(dict.fromkeys([c for o in observations for c in o.get("concepts") or []] + top_terms(observations)))[
        :12
    ]


# -- writing summaries -------------------------------------------------------------------------------------


def summarize(ctx: Ctx, session_id: str) -> dict[str, Any]:
    """Build and store the summary of one session; a model step may replace the synthetic one.

    :raise NotFound: unknown (or invisible) session.
    :raise Conflict: the session has no observations.
    """
    rt = ctx.rt
    store = rt.db.reader()
    session = load_session(ctx, store, session_id)
    observations = session_observations(ctx, store, session_id)
    if not observations:
        raise Conflict(f"session {session_id!r} has no observations to summarise", code=errors.NO_OBSERVATIONS)
    fallback = synthetic_summary(session, observations)
    drafted, method = run_model_steps("summarize", ctx, {"session": session, "observations": observations})
    fields = {**fallback, **{k: v for k, v in (drafted or {}).items() if k in fallback and v}}
    summary = {
        "sessionId": session_id,
        "project": session.get("project"),
        "createdAt": rt.clock.iso(),
        **fields,
        "observationCount": len(observations),
        **written_by("summarize", ctx, method),
    }
    if session.get("agentId"):
        summary["agentId"] = session["agentId"]
    with rt.db.transaction("summarize", agent_id=rt.settings.agent_id) as tx:
        tx.records.set(SUMMARIES, session_id, summary, now=summary["createdAt"])
    rt.publish("summary", summary)
    return summary


def remade_without_a_model(store: Any, session_id: str, observations: list[dict]) -> dict[str, Any] | None:
    """A session's summary made again from ``observations`` (its records in time order, as they
    are now) if it was written without a model; None when it was not (a model's summary is
    better), there is none, or it would read the same. No model is asked. For ``agentmemory
    recompress``: summaries made from records as an older release stored them, or by an older
    release's summary code, come level with the records."""
    old = store.records.get(SUMMARIES, session_id)
    session = store.records.get(SESSIONS, session_id)
    if not old or old.get("method") != SYNTHETIC or not session or not observations:
        return None
    recent = observations[-MAX_OBSERVATIONS:]  # as summarize reads them
    # its date stays: the context block orders past sessions by it
    summary = {**old, **synthetic_summary(session, recent), "observationCount": len(recent)}
    return None if summary == old else summary


def save_remade(rt: Any, summary: dict[str, Any]) -> None:
    with rt.db.transaction("summarize", agent_id=rt.settings.agent_id) as tx:
        tx.records.set(SUMMARIES, summary["sessionId"], summary, now=rt.clock.iso())
        tx.audit_message = f"summary of session {summary['sessionId']} made again from its records as they are now"


def summarize_on_session_end(ctx: Ctx, session: dict[str, Any]) -> None:
    if not session.get("observationCount"):
        return
    try:
        summarize(ctx, session["id"])
    except Exception:  # noqa: BLE001 - a failed summary must not fail the session end
        log.exception("summarising session %s failed", session["id"])


@tool("summarize", params(["sessionId"], sessionId=SESSION_ID), http=[("POST", "/summarize")], mcp=False)
def summarize_tool(ctx: Ctx, args: dict) -> dict:
    """Summarise a session now (synthetic without an LLM); also runs when a session ends."""
    summary = summarize(ctx, args["sessionId"])
    quality = 0.5 if summary["method"] == SYNTHETIC else 0.8
    return {"success": True, "summary": summary, "qualityScore": quality}
