"""The tool registry: one table of name -> JSON Schema -> handler.

REST routes, MCP (HTTP and stdio), the WebSocket and the CLI all dispatch through ``call()``;
there is no second path. A tool declares its REST bindings (``http``), whether MCP clients see
it (``mcp``), whether it belongs to the ``core`` subset and the right a token needs to call it
(``right``: ``read`` for a search reached by POST, ``admin`` for a tool that acts on the whole store;
left out, a tool reached only by GET reads and any other writes). An admin tool also declares
whether its answer carries records (``answers_with_records``), which decides whether it needs the
``read`` right too. Arguments are coerced once (strings
from query strings and MCP clients become ints, booleans and lists; a comma-separated string is
a list) and validated once against the schema before the handler runs.

Registration keeps order and refuses duplicate names and duplicate (method, path) pairs, an admin
tool that does not say whether its answer carries records, and that declaration on any other tool.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema

from agentmemory_server import errors
from agentmemory_server.errors import AppError, InvalidInput, NotFound
from agentmemory_server.kernel import principals
from agentmemory_server.kernel.schema_check import SchemaValidator, compile_acceptor
from agentmemory_server.kernel.util import loads_clean

log = logging.getLogger("agentmemory.registry")

# -- schema helpers (plain JSON Schema dicts) ------------------------------------------------------


def string(
    description: str = "",
    *,
    min_length: int | None = 1,
    max_length: int | None = None,
    enum: Iterable[str] | None = None,
    default: Any = None,
    pattern: str | None = None,
) -> dict:
    s: dict[str, Any] = {"type": "string"}
    if description:
        s["description"] = description
    if min_length is not None:
        s["minLength"] = min_length
    if max_length is not None:
        s["maxLength"] = max_length
    if enum is not None:
        s["enum"] = list(enum)
    if pattern is not None:
        s["pattern"] = pattern
    if default is not None:
        s["default"] = default
    return s


def integer(
    description: str = "", *, minimum: int | None = None, maximum: int | None = None, default: int | None = None
) -> dict:
    s: dict[str, Any] = {"type": "integer"}
    if description:
        s["description"] = description
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if default is not None:
        s["default"] = default
    return s


def number(
    description: str = "", *, minimum: float | None = None, maximum: float | None = None, default: float | None = None
) -> dict:
    s: dict[str, Any] = {"type": "number"}
    if description:
        s["description"] = description
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if default is not None:
        s["default"] = default
    return s


def boolean(description: str = "", *, default: bool | None = None) -> dict:
    s: dict[str, Any] = {"type": "boolean"}
    if description:
        s["description"] = description
    if default is not None:
        s["default"] = default
    return s


def array(items: dict, description: str = "", *, max_items: int | None = None, min_items: int | None = None) -> dict:
    s: dict[str, Any] = {"type": "array", "items": items}
    if description:
        s["description"] = description
    if max_items is not None:
        s["maxItems"] = max_items
    if min_items is not None:
        s["minItems"] = min_items
    return s


def anything(description: str = "") -> dict:
    return {"description": description} if description else {}


def obj(description: str = "") -> dict:
    s: dict[str, Any] = {"type": "object"}
    if description:
        s["description"] = description
    return s


def params(required: Iterable[str] = (), **properties: dict) -> dict:
    """An object schema. Unknown keys are allowed (and ignored) like upstream's handlers."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = list(required)
    if required:
        schema["required"] = required
    return schema


# Shared argument schemas.
# Ids are free text (upstream clients send anything) but never control characters.
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
SESSION_ID = string("Session id", max_length=256, pattern=ID_PATTERN)
PROJECT = string("Project name", max_length=512)
AGENT_ID = string("Agent id filter; '*' means every agent", max_length=128)


# -- records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    status: int = 200


@dataclass(frozen=True)
class Reply:
    """A handler result with an HTTP status other than the route's default.

    ``content`` is ``(body, mimetype)`` for REST routes that answer something other than JSON:
    bytes (an image) always replace ``data`` there; ``text/html`` does when the client prefers
    HTML (``Accept`` or ``?format=html``). Every other transport gets ``data``."""

    data: Any
    status: int = 200
    content: tuple[bytes | str, str] | None = None


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict
    handler: Callable[[Ctx, dict], Any]
    routes: tuple[Route, ...] = ()
    mcp: bool = True
    core: bool = False
    content: tuple[str, ...] = ()  # media types a REST answer may have besides JSON (see Reply)
    # The right a token needs (principals.right_needed): None means read for a tool reached only
    # by GET, write for any other.
    right: str | None = None
    # Admin tools only: whether the answer carries records (then the read right is needed too).
    answers_with_records: bool | None = None
    validator: Any = field(default=None, compare=False, repr=False)
    # schema_check.compile_acceptor of the schema: a fast yes, or "ask the validator"
    accepts: Any = field(default=None, compare=False, repr=False)


@dataclass
class Ctx:
    """Who is calling and with what runtime; the one way scope enters a handler."""

    rt: Any
    source: str = "rest"
    agent_id: str | None = None
    # kernel.principals.Principal of the caller's token (the request being served); None: trusted
    principal: Any = field(default_factory=principals.current)


# MCP (2025-11-25) tool names: 1-128 characters of ASCII letters, digits, '_', '-' and '.'.
MCP_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class Registry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._routes: dict[tuple[str, str], str] = {}

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"duplicate tool {tool.name!r}")
        if not MCP_TOOL_NAME.match(tool.name):
            raise ValueError(f"tool name {tool.name!r} is not a valid MCP tool name")
        for route in tool.routes:
            key = (route.method, route.path)
            if key in self._routes:
                raise ValueError(f"{route.method} {route.path} already bound to {self._routes[key]}")
            self._routes[key] = tool.name
        _check_rights_declaration(tool)
        SchemaValidator.check_schema(tool.schema)
        validator = SchemaValidator(tool.schema)  # ECMA's '$' in patterns, as the acceptor (schema_check.py)
        tool = replace(tool, validator=validator, accepts=compile_acceptor(tool.schema))
        self._tools[tool.name] = tool
        return tool

    def order_by_module(self, modules: list[str]) -> None:
        """List tools module by module in the given order (registration order within a module),
        so the tool list does not depend on which module happened to be imported first."""
        rank = {name: i for i, name in enumerate(modules)}
        ordered = sorted(self._tools.values(), key=lambda t: rank.get(t.handler.__module__, len(rank)))
        self._tools = {t.name: t for t in ordered}

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise NotFound(f"unknown tool {name!r}", code=errors.UNKNOWN_TOOL) from None

    def all(self) -> list[Tool]:
        return list(self._tools.values())

    def mcp_tools(self, which: str = "all") -> list[Tool]:
        return [t for t in self._tools.values() if t.mcp and (which == "all" or t.core)]

    def for_handler(self, handler: Callable[..., Any]) -> Tool:
        """The tool whose handler is ``handler`` (a feature calling another feature's tool)."""
        found = next((t for t in self._tools.values() if t.handler is handler), None)
        if found is None:
            raise ValueError(f"{getattr(handler, '__name__', handler)!r} is not a registered tool handler")
        return found

    def for_route(self, method: str, path: str) -> Tool | None:
        """The tool bound to a REST route, or None; lets adapters use a feature only when
        the module that provides it is installed."""
        name = self._routes.get((method, path))
        return self._tools[name] if name else None


def _check_rights_declaration(tool: Tool) -> None:
    """Refuse a right that does not exist, and an admin tool that does not say whether its answer
    carries records: left unsaid, a new admin tool answering with records would be handed to a
    token holding ``admin`` without ``read``. Any other tool may not say it (a read tool needs
    ``read`` anyway; a write tool answers a caller without ``read`` with a receipt)."""
    if tool.right not in (None, *principals.RIGHTS):
        raise ValueError(f"tool {tool.name!r} declares right={tool.right!r}: one of {', '.join(principals.RIGHTS)}")
    is_admin = tool.right == "admin"
    if is_admin and tool.answers_with_records is None:
        raise ValueError(
            f"admin tool {tool.name!r} must declare answers_with_records=True or False: whether its answer "
            "carries records (then a token with the admin right needs the read right too)"
        )
    if not is_admin and tool.answers_with_records is not None:
        raise ValueError(
            f"tool {tool.name!r} declares answers_with_records but is not an admin tool: only admin tools "
            '(right="admin") declare it'
        )


REGISTRY = Registry()


def tool(
    name: str,
    schema: dict,
    *,
    http: Iterable[tuple] = (),
    mcp: bool = True,
    core: bool = False,
    description: str | None = None,
    content: tuple[str, ...] = (),
    right: str | None = None,
    answers_with_records: bool | None = None,
) -> Callable:
    """Register ``fn(ctx, args)`` as a tool. ``http`` items are (method, path[, status]);
    ``content`` lists media types its REST answer may have besides JSON (``Reply.content``);
    ``right`` is the right a token needs (``Tool.right``); ``answers_with_records`` is required
    of an admin tool and refused on any other (``Tool.answers_with_records``). The description
    defaults to the first paragraph of the docstring."""

    def register(fn: Callable) -> Callable:
        doc = description or " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        if not doc:
            raise ValueError(f"tool {name!r} needs a description")
        routes = tuple(Route(*item) for item in http)
        REGISTRY.add(
            Tool(
                name=name,
                description=doc,
                schema=schema,
                handler=fn,
                routes=routes,
                mcp=mcp,
                core=core,
                content=content,
                right=right,
                answers_with_records=answers_with_records,
            )
        )
        return fn

    return register


# -- argument coercion and validation -----------------------------------------------------------------

_INT = re.compile(r"^[+-]?\d+$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _main_type(schema: dict) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return t


def _decoded(text: str, kind: type) -> Any:
    """``text`` parsed as JSON when it is a JSON value of ``kind``, else None. Parsed as strictly
    as a request body (a NaN, a lone surrogate or 5,000 levels of nesting here reached the store,
    or overflowed the stack)."""
    try:
        value = loads_clean(text)
    except ValueError:
        return None
    return value if isinstance(value, kind) else None


def _coerce_text(text: str, kind: str | None, schema: dict) -> Any:
    """A string argument as the type the schema wants (query strings and loosely typed MCP
    clients send everything as text); ``_UNCHANGED`` when it is not one."""
    if kind == "integer" and _INT.match(text):
        return int(text)
    if kind == "number":
        try:
            number = int(text) if _INT.match(text) else float(text)
        except ValueError:
            return _UNCHANGED
        # "NaN" and "inf" parse as floats, and NaN passes every minimum/maximum check
        return number if isinstance(number, int) or math.isfinite(number) else _UNCHANGED
    if kind == "boolean" and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind == "array":
        as_list = _decoded(text, list) if text.startswith("[") else None  # a JSON array sent as a string
        parts = as_list if as_list is not None else [p.strip() for p in text.split(",") if p.strip()]
        return [_coerce(p, schema.get("items", {})) for p in parts]
    if kind == "object" and text.startswith("{"):
        found = _decoded(text, dict)
        return found if found is not None else _UNCHANGED
    return _UNCHANGED


_UNCHANGED = object()


def _coerce(value: Any, schema: dict) -> Any:
    kind = _main_type(schema)
    if isinstance(value, str):
        coerced = _coerce_text(value.strip(), kind, schema)
        return value if coerced is _UNCHANGED else coerced
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "array" and isinstance(value, list):
        return [_coerce(v, schema.get("items", {})) for v in value]
    return value


def prepare_args(tool_: Tool, args: dict[str, Any]) -> dict[str, Any]:
    """Coerce, fill defaults and validate; raise InvalidInput naming the field."""
    if not isinstance(args, dict):
        raise InvalidInput("arguments must be a JSON object")
    props = tool_.schema.get("properties", {})
    out = dict(args)
    for key, prop in props.items():
        if key in out and out[key] is not None:
            out[key] = _coerce(out[key], prop)
        elif key in out and out[key] is None:
            del out[key]  # null means "not given", as upstream's optional fields
        if key not in out and "default" in prop:
            out[key] = prop["default"]
    if tool_.accepts is not None and tool_.accepts(out):
        return out  # the usual case, checked without walking the schema (same answer: schema_check.py)
    errors = sorted(tool_.validator.iter_errors(out), key=lambda e: (list(e.path), e.validator))
    if errors:
        raise _schema_error(errors[0])
    return out


def _schema_error(error: jsonschema.ValidationError) -> InvalidInput:
    path = ".".join(str(p) for p in error.path)
    v, arg = error.validator, error.validator_value
    if v == "required":
        missing = next((k for k in arg if k not in (error.instance or {})), "?")
        field_name = f"{path}.{missing}" if path else missing
        return InvalidInput(f"missing required field '{field_name}'", field=field_name)
    label = f"'{path}'" if path else "arguments"
    article = "an" if str(arg)[:1] in ("a", "e", "i", "o", "u") else "a"
    messages: dict[str, Callable[[], str]] = {
        "type": lambda: f"{label} must be {article} {arg}",
        "minimum": lambda: f"{label} must be >= {arg}",
        "maximum": lambda: f"{label} must be <= {arg}",
        "minLength": lambda: (
            f"{label} must not be empty" if arg == 1 else f"{label} must have at least {arg} characters"
        ),
        "maxLength": lambda: f"{label} must have at most {arg} characters",
        "enum": lambda: f"{label} must be one of: {', '.join(map(str, arg))}",
        "minItems": lambda: f"{label} must have at least {arg} item(s)",
        "maxItems": lambda: f"{label} must have at most {arg} items",
        "pattern": lambda: f"{label} has an invalid format",
    }
    message = messages[v]() if v in messages else f"{label}: {error.message}"
    return InvalidInput(message, field=path or None)


# -- dispatch ---------------------------------------------------------------------------------------------


def call(ctx: Ctx, name: str, args: dict[str, Any] | None) -> Any:
    """Run one tool: look up, coerce and validate arguments, run the handler.

    :raise NotFound: unknown tool name.
    :raise InvalidInput: arguments do not satisfy the schema.
    :raise AppError: whatever the handler raises.
    """
    tool_ = REGISTRY.get(name)
    prepared = prepare_args(tool_, args or {})
    if ctx.principal is not None:
        principals.scope_call(ctx, tool_, prepared)
    try:
        result = tool_.handler(ctx, prepared)
    except AppError as exc:
        named = naming_the_lock_holder(ctx.rt, exc)
        if named is not exc:
            raise named from exc
        raise
    except Exception as exc:
        # A storage failure outside a write transaction (a read of a damaged page, a busy file)
        # is a 503 the client can act on, not a 500.
        fault = ctx.rt.db.app_error(exc)
        if fault is None:
            raise
        raise naming_the_lock_holder(ctx.rt, fault) from exc
    if principals.answers_with_receipt(ctx.principal, tool_):  # a write-only token reads nothing back
        if isinstance(result, Reply):
            return Reply(principals.write_receipt(result.data), result.status)
        return principals.write_receipt(result)
    return result


def naming_the_lock_holder(rt: Any, exc: AppError) -> AppError:
    """A write refused with 503 ``database_busy`` says what holds the write lock when a feature
    knows (a replace or merge import, ``agentmemory migrate``: ``Hooks.write_lock_holder``), so a
    client learns that an import runs, not only that a lock was taken. Same code, status and
    ``Retry-After``; ``details.heldBy`` names the holder. ``exc`` itself when nobody is named (and
    never changed: a group commit hands one error to every write of its group). Any other
    error is ``exc`` itself, and so is a 503 that already names its holder: the adapters' error
    rendering (REST, MCP over HTTP, the WebSocket) passes every error through here once more, for
    those raised outside this module's ``call``."""
    if not errors.is_database_busy(exc) or "heldBy" in exc.details:
        return exc
    for holder_of in rt.hooks.write_lock_holder:
        try:
            holder = holder_of(rt)
        except Exception:  # noqa: BLE001 - explaining a 503 must not replace it with another error
            log.debug("could not read what holds the write lock", exc_info=True)
            continue
        if holder:
            what = holder.get("operation") or "an import"
            where = f"process {holder.get('pid')} on {holder.get('host')}"
            return AppError(
                f"{what} is running on this store since {holder.get('since')} ({where}) and holds its write "
                f"lock until it is done; {exc.message}",
                code=exc.code,
                status=exc.status,
                details={**exc.details, "heldBy": holder},
                retry_after=exc.retry_after,
            )
    return exc


def run(handler: Callable[[Ctx, dict], Any], ctx: Ctx, args: dict[str, Any]) -> Any:
    """Call another feature's tool by reference: the handler is imported (so the dependency is
    visible to readers and to the import contracts), its arguments are coerced, defaulted and
    validated exactly as for any other call, and the data of its result is returned."""
    tool_ = REGISTRY.for_handler(handler)
    prepared = prepare_args(tool_, args)
    if ctx.principal is not None:
        principals.scope_nested_call(ctx, tool_, prepared)
    data, _status = unwrap(handler(ctx, prepared))
    return data


def unwrap(result: Any) -> tuple[Any, int | None]:
    """(data, status) of a handler result; status None means the route default."""
    if isinstance(result, Reply):
        return result.data, result.status
    return result, None


def mcp_text(result: Any) -> str:
    """The text block MCP clients get for a result (pretty JSON, or the narrative text)."""
    data, _ = unwrap(result)
    if isinstance(data, dict) and data.get("format") == "narrative" and isinstance(data.get("text"), str):
        return data["text"]
    return json.dumps(data, indent=2, ensure_ascii=False)


def error_text(exc: AppError) -> str:
    return json.dumps(exc.to_dict(), ensure_ascii=False)
