"""The knowledge graph: how one session's extraction is written (graph.py extracts it).

A node's id is a fingerprint of (agent, project, type, name), an edge's of (type, source,
target). Each record keeps how much every session contributed (``sessions``, the newest
``MAX_SESSIONS``; older counts are folded into ``earlier``), and ``mem:graph:sessions`` records
which nodes and edges a session produced, so extracting a session again replaces its share
instead of counting it twice. Apart from graph.py (the extraction, deterministic or the
model's, its job and the graph's tools) because this is the graph's bookkeeping, the same
whoever extracted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import GRAPH_EDGES as EDGES
from agentmemory_server.kernel.scopes import GRAPH_NODES as NODES
from agentmemory_server.kernel.scopes import GRAPH_SESSIONS as CONTRIBUTIONS

MAX_SESSIONS = 100
MAX_SOURCE_IDS = 32
MAX_NODES_PER_SESSION = 300  # the most supported ones; keeps a huge session's graph drawable
MAX_EDGES_PER_SESSION = 600

Key = tuple[str, str]  # (type, name)


@dataclass
class Extraction:
    """Entities and relations of one session, each with the observations that support it."""

    method: str
    entities: dict[Key, list[str]] = field(default_factory=dict)
    relations: dict[tuple[Key, Key, str], list[str]] = field(default_factory=dict)
    model: str | None = None  # the model's name when a model extracted it

    @property
    def writer(self) -> dict[str, str]:
        """``method`` (the provider, or synthetic) and ``model`` as the records keep them."""
        return {"method": self.method, **({"model": self.model} if self.model else {})}

    def entity(self, key: Key, obs_id: str) -> None:
        ids = self.entities.setdefault(key, [])
        if obs_id not in ids:
            ids.append(obs_id)

    def relation(self, a: Key, b: Key, rel_type: str, obs_ids: list[str]) -> None:
        ids = self.relations.setdefault((a, b, rel_type), [])
        ids.extend(i for i in obs_ids if i not in ids)


def _fingerprint(prefix: str, *parts: str | None) -> str:
    return prefix + hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()[:16]


def _credit(record: dict[str, Any], session_id: str, count: int, field_name: str) -> None:
    """Set one session's share of a node's mentions or an edge's weight (0 removes it)."""
    sessions = record.setdefault("sessions", {})
    sessions.pop(session_id, None)
    if count:
        sessions[session_id] = count
    while len(sessions) > MAX_SESSIONS:
        oldest = next(iter(sessions))
        record["earlier"] = record.get("earlier", 0) + sessions.pop(oldest)
    record[field_name] = record.get("earlier", 0) + sum(sessions.values())


def _touch(record: dict[str, Any], obs_ids: list[str], writer: dict[str, str], now: str) -> None:
    record["sourceObservationIds"] = list(dict.fromkeys(obs_ids + record.get("sourceObservationIds", [])))[
        :MAX_SOURCE_IDS
    ]
    record.pop("model", None)  # the last writer's, as ``method``
    record.update(**writer, updatedAt=now)


def _strongest(found: Extraction) -> Extraction:
    """At most MAX_NODES / MAX_EDGES per session, the best supported first."""
    ranked = sorted(found.entities, key=lambda k: (-len(found.entities[k]), k))[:MAX_NODES_PER_SESSION]
    kept = Extraction(found.method, {k: found.entities[k] for k in ranked}, model=found.model)
    relations = [r for r in found.relations if r[0] in kept.entities and r[1] in kept.entities]
    for rel in sorted(relations, key=lambda r: (-len(found.relations[r]), r))[:MAX_EDGES_PER_SESSION]:
        kept.relations[rel] = found.relations[rel]
    return kept


def _drop_stale(tx: Any, session_id: str, previous: dict[str, Any], kept: set[str], now: str) -> None:
    """Take the session's share out of the nodes and edges it no longer produces; a record left
    with nothing is deleted."""
    for scope, ids_field, weight_field in ((NODES, "nodeIds", "mentions"), (EDGES, "edgeIds", "weight")):
        for stale_id in set(previous.get(ids_field) or []) - kept:
            stale = tx.records.get(scope, stale_id)
            if stale is None:
                continue
            _credit(stale, session_id, 0, weight_field)
            if stale[weight_field]:
                tx.records.set(scope, stale_id, stale, now=now)
            else:
                tx.records.delete(scope, stale_id)


def _upsert(
    tx: Any,
    scope: str,
    record_id: str,
    fresh: dict[str, Any],
    session_id: str,
    obs_ids: list[str],
    weight_field: str,
    writer: dict[str, str],
    now: str,
) -> None:
    record = tx.records.get(scope, record_id) or {"id": record_id, **fresh, "createdAt": now}
    _credit(record, session_id, max(1, len(obs_ids)), weight_field)
    _touch(record, obs_ids, writer, now)
    tx.records.set(scope, record_id, record, now=now)


def write_session_graph(ctx: Ctx, session: dict[str, Any], found: Extraction) -> dict[str, Any]:
    """Replace the session's share of the graph with ``found``; returns what was written."""
    rt, sid, found = ctx.rt, session["id"], _strongest(found)
    agent, project, now = session.get("agentId"), session.get("project"), rt.clock.iso()
    owner = {k: v for k, v in (("project", project), ("agentId", agent)) if v}
    node_ids = {key: _fingerprint("ent_", agent, project, *key) for key in found.entities}
    edge_ids = {rel: _fingerprint("edge_", rel[2], node_ids[rel[0]], node_ids[rel[1]]) for rel in found.relations}
    with rt.db.transaction("graph_extract", agent_id=agent) as tx:
        for key, obs_ids in found.entities.items():
            _upsert(
                tx,
                NODES,
                node_ids[key],
                {"type": key[0], "name": key[1], **owner},
                sid,
                obs_ids,
                "mentions",
                found.writer,
                now,
            )
        for (a, b, rel_type), obs_ids in found.relations.items():
            fresh = {"type": rel_type, "sourceNodeId": node_ids[a], "targetNodeId": node_ids[b], **owner}
            _upsert(tx, EDGES, edge_ids[(a, b, rel_type)], fresh, sid, obs_ids, "weight", found.writer, now)
        _drop_stale(
            tx, sid, tx.records.get(CONTRIBUTIONS, sid) or {}, set(node_ids.values()) | set(edge_ids.values()), now
        )
        contribution = _contribution(sid, found.writer, node_ids.values(), edge_ids.values(), now, owner)
        tx.records.set(CONTRIBUTIONS, sid, contribution, now=now)
        tx.audit_message = f"graph of session {sid}: {len(node_ids)} node(s), {len(edge_ids)} edge(s)"
    result = {"sessionId": sid, **found.writer, "nodes": len(node_ids), "edges": len(edge_ids)}
    rt.publish("graph", result)
    return result


def _contribution(
    sid: str, writer: dict[str, Any], node_ids: Iterable[str], edge_ids: Iterable[str], now: str, owner: dict[str, Any]
) -> dict[str, Any]:
    """The session's share of the graph, as recorded: who extracted it, its nodes and edges."""
    return {
        "sessionId": sid,
        **writer,
        "nodeIds": sorted(node_ids),
        "edgeIds": sorted(edge_ids),
        "extractedAt": now,
        **owner,
    }
