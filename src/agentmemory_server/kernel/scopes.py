"""The names of the record scopes, in one place.

A record is a JSON value stored under ``(scope, key)``. Every scope the server writes is listed
in ``SCOPES`` with what its key and value are; AGENTS.md's scope table is generated from it and
a test fails when the code uses a ``mem:`` scope that is not listed here. Feature modules import
the constants below instead of spelling scope strings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmemory_server.storage.interfaces import RecordIndex


@dataclass(frozen=True)
class ScopeDoc:
    name: str  # the scope, or a pattern with {placeholders}
    key: str
    value: str


SESSIONS = "mem:sessions"
OBSERVATIONS_PREFIX = "mem:obs:"
MEMORIES = "mem:memories"
SUMMARIES = "mem:summaries"
LESSONS = "mem:lessons"
INSIGHTS = "mem:insights"
ACTIONS = "mem:actions"
ACTION_EDGES = "mem:action-edges"
CRYSTALS = "mem:crystals"
PROFILES = "mem:profiles"
SEMANTIC = "mem:semantic"
PROCEDURAL = "mem:procedural"
RELATIONS = "mem:relations"
SLOTS = "mem:slots"
SLOTS_PREFIX = "mem:slots:"
CONSOLIDATION = "mem:consolidation"
CONSOLIDATION_RUNS = "mem:consolidation-runs"
ANTIGRAVITY = "mem:antigravity"
GRAPH_NODES = "mem:graph:nodes"
GRAPH_EDGES = "mem:graph:edges"
GRAPH_SESSIONS = "mem:graph:sessions"
TOKENS = "mem:tokens"
MCP_ENDED_SESSIONS = "mem:mcp-ended-sessions"


def obs_scope(session_id: str) -> str:
    """The scope holding one session's observations."""
    return f"{OBSERVATIONS_PREFIX}{session_id}"


def is_obs_scope(scope: str) -> bool:
    return scope.startswith(OBSERVATIONS_PREFIX)


def session_of(scope: str) -> str:
    """The session id of an observation scope."""
    return scope[len(OBSERVATIONS_PREFIX) :]


SCOPES: tuple[ScopeDoc, ...] = (
    ScopeDoc(
        SESSIONS,
        "session id",
        "Session: id, project, cwd, startedAt, updatedAt, endedAt?, status, observationCount, "
        "agentId?, title?, firstPrompt?, finalizeAfter? (idle finalizer due time), reopenedAt?, reopens?",
    ),
    ScopeDoc(
        OBSERVATIONS_PREFIX + "{sessionId}",
        "observation id",
        "Observation: id, sessionId, timestamp, hookType, project, cwd, eventId, agentId?, type, title, "
        "subtitle?, facts, narrative, concepts, files, importance, confidence, toolName?, contentHash? (tool "
        "events: fingerprint of tool, input and output), method? and compressedAt? (model compression), raw "
        "(stripped hook data, images replaced by placeholders), originalHookType? (an unknown hook stored as "
        "`other`), images? [{id (sha256), mime, bytes, field}], imageRef?, modality? (`image`/`mixed`), "
        "truncated? {fields, chars}",
    ),
    ScopeDoc(
        MEMORIES,
        "memory id",
        "Memory: id, createdAt, updatedAt, type, title, content, concepts, files, sessionIds, strength, "
        "version, parentId?, supersedes?, supersededBy?, isLatest, forgetAfter?, project?, agentId?",
    ),
    ScopeDoc(
        SUMMARIES,
        "session id",
        "Session summary: sessionId, project, createdAt, title, narrative, keyDecisions, filesModified, "
        "concepts, observationCount, method (`synthetic` or the model step), agentId?",
    ),
    ScopeDoc(
        LESSONS,
        "lesson id (`lsn_` fingerprint)",
        "Lesson (U§4.5): id, content, context, confidence, reinforcements, source, sourceIds, tags, "
        "project?, agentId?, createdAt, updatedAt, lastReinforcedAt?, lastDecayedAt?, decayRate, deleted?; "
        "indexed as search kind `lesson`; target of upstream exports' `lessons`",
    ),
    ScopeDoc(
        INSIGHTS,
        "insight id (`ins_` fingerprint of project + terms)",
        "Insight from project reflection: title, content, confidence, reinforcements, "
        "sourceConceptCluster, source*Ids, project?; target of upstream exports' `insights`",
    ),
    ScopeDoc(
        ACTIONS,
        "action id",
        "Action (U§4.7): id, title, description, status, priority, createdBy, assignedTo?, project?, "
        "tags, parentId?, result?, metadata?, crystallizedInto?, agentId?; target of upstream exports' "
        "`actions`",
    ),
    ScopeDoc(
        ACTION_EDGES,
        "edge id",
        "Action edge: type (requires, unlocks, spawned_by, conflicts_with), sourceActionId, "
        "targetActionId; target of upstream exports' `actionEdges`",
    ),
    ScopeDoc(
        CRYSTALS,
        "crystal id (a session's is a fingerprint of it)",
        "Crystal: narrative, keyOutcomes, filesAffected, lessons, sourceActionIds, sessionId?, project?, "
        "method; target of upstream exports' `crystals`",
    ),
    ScopeDoc(
        PROFILES,
        "project",
        "Cached project profile (1 h): project, updatedAt, topConcepts, topFiles, conventions, "
        "commonErrors, recentActivity, sessionCount, totalObservations; target of upstream exports' "
        "`profiles`",
    ),
    ScopeDoc(SEMANTIC, "fact id", "Semantic memory; target of upstream exports' `semanticMemories`"),
    ScopeDoc(PROCEDURAL, "procedure id", "Procedural memory; target of upstream exports' `proceduralMemories`"),
    ScopeDoc(
        RELATIONS,
        "relation id (`rel_` fingerprint of type, source, target)",
        "Relation between memories: type, sourceId, targetId, confidence, metadata?; target of upstream "
        "exports' `relations`",
    ),
    ScopeDoc(SLOTS, "label", "Project-scope slot written without a project (upstream's flat scope)"),
    ScopeDoc(
        SLOTS_PREFIX + "global",
        "label",
        "Global slot: label, content, sizeLimit, description, pinned, readOnly, scope, createdAt, updatedAt",
    ),
    ScopeDoc(SLOTS_PREFIX + "project:{project}", "label", "Slot of one project (project name percent-encoded)"),
    ScopeDoc(
        SLOTS_PREFIX + "agent:{agentId}[:global|:project:{project}]",
        "label",
        "Slots in isolated agent scope: each agent has its own namespace",
    ),
    ScopeDoc(
        CONSOLIDATION,
        "agent + project + group key",
        "Last consolidation of a group: memoryId and the observation ids it covered (re-runs skip unchanged groups)",
    ),
    ScopeDoc(
        CONSOLIDATION_RUNS,
        "`project:` + project name",
        "When the session-end consolidation of a project last started: project, startedAt (epoch s), "
        "startedAtIso; AGENTMEMORY_CONSOLIDATION_COOLDOWN_MS counts from it in every process",
    ),
    ScopeDoc(
        ANTIGRAVITY,
        "file path relative to ANTIGRAVITY_DIR",
        "Sync state of one imported Antigravity file: sha256, size, sessionId, generation, observationIds, syncedAt",
    ),
    ScopeDoc(
        GRAPH_NODES,
        "`ent_` fingerprint of agent, project, type, name",
        "Knowledge-graph node: id, type, name, mentions, sessions {sessionId: count} (newest 100; older "
        "in `earlier`), sourceObservationIds (<= 32), method (`synthetic` or the model), project?, "
        "agentId?",
    ),
    ScopeDoc(
        GRAPH_EDGES,
        "`edge_` fingerprint of type, source, target",
        "Knowledge-graph edge: type, sourceNodeId, targetNodeId, weight, sessions, "
        "sourceObservationIds, method, project?, agentId?",
    ),
    ScopeDoc(
        GRAPH_SESSIONS,
        "session id",
        "Which nodes and edges a session's extraction produced (re-extraction replaces that share)",
    ),
    ScopeDoc(
        TOKENS,
        "SHA-256 of the token (the token itself is never stored)",
        "API token: id (first 12 hex of the hash), principal, kind (person or agent), projects (`*` = all), "
        "rights (read, write, admin), createdAt, revokedAt?, note?",
    ),
    ScopeDoc(
        MCP_ENDED_SESSIONS,
        "MCP session id (Mcp-Session-Id)",
        "An MCP session a client ended with DELETE /mcp: sessionId, endedAt; every process answers 404 "
        "to it (the newest 1,000 are kept)",
    ),
)


# Record fields that listings and lookups filter or sort by: the storage keeps an index on each,
# so none of those reads scans its scope.
RECORD_INDEXES: tuple[RecordIndex, ...] = (
    RecordIndex(SESSIONS, ("startedAt",)),
    RecordIndex(SESSIONS, ("project", "startedAt")),  # a project's sessions, newest first (context, /sessions)
    RecordIndex(SESSIONS, ("status", "finalizeAfter")),  # the idle finalizer's due sessions
    RecordIndex(MEMORIES, ("updatedAt",)),
    RecordIndex(MEMORIES, ("isLatest", "updatedAt")),  # GET /memories?latest and its count
    RecordIndex(MEMORIES, ("project", "updatedAt")),
    RecordIndex(MEMORIES, ("forgetAfter",)),
    # GET /memories: newest first by creation (an immutable field, so a keyset cursor never
    # skips or repeats a memory that changed while a client paged), alone or by latest/project.
    RecordIndex(MEMORIES, ("createdAt",)),
    RecordIndex(MEMORIES, ("isLatest", "createdAt")),
    RecordIndex(MEMORIES, ("project", "createdAt")),
    RecordIndex(OBSERVATIONS_PREFIX, ("timestamp",), prefix=True),  # a session's observations in order
    RecordIndex(OBSERVATIONS_PREFIX, ("importance",), prefix=True),  # its most important (context)
    RecordIndex(LESSONS, ("confidence",)),  # the context block's most confident lessons
    RecordIndex(LESSONS, ("project", "confidence")),
    RecordIndex(RELATIONS, ("sourceId",)),
    RecordIndex(RELATIONS, ("targetId",)),
    RecordIndex(GRAPH_EDGES, ("sourceNodeId",)),  # GET /graph/node
    RecordIndex(GRAPH_EDGES, ("targetNodeId",)),
)
