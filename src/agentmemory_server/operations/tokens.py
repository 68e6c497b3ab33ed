"""API tokens for people and agents (kernel/principals.py says what they allow): create, list,
revoke. Admin tools: REST under ``/agentmemory/tokens`` and ``agentmemory tokens ...``; the
token itself is shown once, at creation, and only its SHA-256 is stored."""

from __future__ import annotations

from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel import principals
from agentmemory_server.kernel.registry import Ctx, Reply, array, params, string, tool
from agentmemory_server.kernel.scopes import TOKENS

TOKEN_ID = string("Token id (the first 12 hex digits of its hash, from tokens_list)", max_length=64)


def public(key: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"id": key[:12], **record}


@tool(
    "tokens_create",
    params(
        ["principal"],
        principal=string("Who the token speaks for: a person's or an agent's name", max_length=64),
        kind=string("person or agent", enum=principals.KINDS, default="agent"),
        projects=array(
            string(max_length=200),
            "Projects it may touch (default: all; a token with the admin right: all)",
            max_items=100,
        ),
        rights=array(
            string(enum=principals.RIGHTS),
            "read, write, admin (default: read, write); admin tools that answer with records need read too",
            max_items=3,
        ),
        note=string("What it is for", min_length=0, max_length=200),
    ),
    http=[("POST", "/tokens", 201)],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def tokens_create(ctx: Ctx, args: dict) -> Reply:
    """Create an API token for a person or an agent; the token is in this answer only."""
    rights = args.get("rights") or ["read", "write"]
    record = principals.token_record(
        args["principal"], args.get("kind") or "agent", args.get("projects") or [], rights, ctx.rt.clock.iso()
    )
    if args.get("note"):
        record["note"] = args["note"]
    token = principals.new_token()
    key = principals.hash_token(token)
    with ctx.rt.db.transaction("tokens_create") as tx:
        tx.records.set(TOKENS, key, record, now=record["createdAt"])
        tx.audit_message = f"token {key[:12]} created for {record['principal']}"
    return Reply({"token": token, **public(key, record)}, 201)


@tool("tokens_list", params(), http=[("GET", "/tokens")], mcp=False, answers_with_records=False, right="admin")
def tokens_list(ctx: Ctx, args: dict) -> dict:
    """Every API token (never the token itself): id, principal, kind, projects, rights, state."""
    rows = ctx.rt.db.reader().records.list(TOKENS)
    return {"tokens": [public(key, record) for key, record in rows]}


@tool(
    "tokens_revoke",
    params(["id"], id=TOKEN_ID),
    http=[("POST", "/tokens/revoke")],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def tokens_revoke(ctx: Ctx, args: dict) -> dict:
    """Revoke an API token by id: refused at once in every process (a live event empties each
    one's token cache), at the latest when its cached entry expires (5 s)."""
    with ctx.rt.db.transaction("tokens_revoke") as tx:
        found = [(k, r) for k, r in tx.records.list(TOKENS) if k.startswith(args["id"].lower())]
        if len(found) != 1:
            raise NotFound(f"no single token with id {args['id']!r}", code=errors.NOT_FOUND)
        key, record = found[0]
        if not record.get("revokedAt"):
            record["revokedAt"] = ctx.rt.clock.iso()
            tx.records.set(TOKENS, key, record, now=record["revokedAt"])
            tx.audit_message = f"token {key[:12]} of {record['principal']} revoked"
            revoked = public(key, record)
            tx.after_commit(lambda: ctx.rt.publish("token", revoked))
    ctx.rt.tokens.forget()
    return {"revoked": True, **public(key, record)}
