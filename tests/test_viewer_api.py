"""The viewer's page (served open, with a nonce CSP) and its read-only tools: overview counts and
ingest rate, recent activity, the project-folder graph."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentmemory_server.operations import overview
from agentmemory_server.adapters.web import VIEWER_FILE, create_app
from agentmemory_server.kernel.util import Clock

PAGE = VIEWER_FILE.read_text(encoding="utf-8")


# -- the page -------------------------------------------------------------------------------------------


@pytest.fixture
def secured(make_runtime):
    rt = make_runtime(secret="page-secret")
    return create_app(runtime=rt).test_client()


@pytest.mark.parametrize("path", ["/viewer", "/agentmemory/viewer"])
def test_page_is_open_without_a_token_but_data_is_not(secured, path):
    r = secured.get(path)
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert '<meta name="agentmemory-auth" content="required">' in r.get_data(as_text=True)
    for data_path in ("/agentmemory/viewer/overview", "/agentmemory/viewer/activity",
                      "/agentmemory/viewer/graph", "/agentmemory/sessions"):
        assert secured.get(data_path).status_code == 401
    ok = secured.get("/agentmemory/viewer/overview", headers={"Authorization": "Bearer page-secret"})
    assert ok.status_code == 200 and ok.headers["X-Content-Type-Options"] == "nosniff"


def test_page_has_a_strict_csp_with_a_fresh_nonce(client):
    first, second = client.get("/viewer"), client.get("/viewer")
    csp = first.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", csp).group(1)
    assert f"style-src 'nonce-{nonce}'" in csp and "default-src 'none'" in csp
    assert "connect-src 'self' ws: wss:" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = first.get_data(as_text=True)
    assert html.count(f'nonce="{nonce}"') == 2 and "__CSP_NONCE__" not in html
    assert nonce not in second.headers["Content-Security-Policy"]
    assert '<meta name="agentmemory-auth" content="none">' in html
    assert first.headers["X-Frame-Options"] == "DENY" and first.headers["X-Content-Type-Options"] == "nosniff"


def test_page_is_self_contained_and_never_parses_markup_from_data():
    # One file, no CDN, no external fetches: every URL it uses is relative to this server.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", PAGE)
    assert "http://" not in PAGE and "https://" not in PAGE
    # Data is rendered with textContent / DOM nodes only.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"on", ".srcdoc"):
        assert sink not in PAGE, sink
    assert re.search(r"function folderColor\(id\)", PAGE)
    assert len(list(Path(VIEWER_FILE.parent).iterdir())) == 1


# -- overview ----------------------------------------------------------------------------------------------


def test_overview_counts_ingest_rate_and_features(make_runtime):
    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    from conftest import ToolCaller

    call = ToolCaller(rt)
    for i in range(3):
        call("agent_observe", sessionId="s1", hookType="post_tool_use", project="p",
             data={"tool_name": "Bash", "tool_input": f"make {i}"})
    now[0] += 120  # two minutes later
    call("agent_observe", sessionId="s2", hookType="post_tool_use", data={"tool_name": "Bash", "tool_input": "ls"})
    call("memory_save", content="The build needs make 4.3", project="p")
    if rt.bus is not None:  # PostgreSQL, several workers: events reach the hub through the event log
        assert rt.bus.flush()
    result = call("viewer_overview")
    assert result["counts"]["sessions"] == 2 and result["counts"]["observations"] == 4
    assert result["counts"]["memories"] == 1
    per_minute = result["ingest"]["observations"]["perMinute"]
    assert len(per_minute) == 60 and per_minute[-1] == 1 and per_minute[-3] == 3 and sum(per_minute) == 4
    assert result["ingest"]["observations"]["lastHour"] == 4 and result["ingest"]["memories"]["lastMinute"] == 1
    assert result["live"]["published"] >= 5 and result["live"]["clients"] == 0
    assert set(result["features"]) == set(overview.OPTIONAL_ROUTES)
    now[0] += 3600  # an hour later the window is empty again
    assert call("viewer_overview")["ingest"]["observations"]["lastHour"] == 0


def test_overview_in_isolated_scope_counts_only_this_agent(make_runtime):
    from conftest import ToolCaller

    shared = ToolCaller(make_runtime())
    shared("agent_observe", sessionId="other", agentId="someone-else", data={"x": 1})
    isolated = ToolCaller(make_runtime(agent_scope="isolated", agent_id="me"))
    isolated("agent_observe", sessionId="mine", data={"x": 2})
    counts = isolated("viewer_overview")["counts"]
    assert counts == {"sessions": 1, "memories": 0, "observations": 1}
    assert shared("viewer_overview")["counts"]["sessions"] == 2


# -- activity ----------------------------------------------------------------------------------------------


def test_activity_is_newest_first_paginated_and_without_raw_payloads(call):
    for i in range(5):
        call("agent_observe", sessionId=f"s{i % 2}", hookType="post_tool_use", project="proj",
             timestamp=f"2026-03-0{i + 1}T10:00:00Z", data={"tool_name": "Bash", "tool_input": f"step {i}"})
    call("memory_save", content="remember the deploy order", project="proj")
    page = call("viewer_activity", limit=3)
    assert page["total"] == 6 and page["hasMore"] is True and len(page["items"]) == 3
    assert page["items"][0]["kind"] == "memory"
    stamps = [item["ts"] for item in page["items"][1:]]
    assert stamps == sorted(stamps, reverse=True) and stamps[0].startswith("2026-03-05")
    assert all("raw" not in item["record"] for item in page["items"])
    rest = call("viewer_activity", limit=3, offset=3)
    assert rest["hasMore"] is False and len(rest["items"]) == 3
    only = call("viewer_activity", kinds="observation", sessionId="s1")
    assert only["total"] == 2 and {i["sessionId"] for i in only["items"]} == {"s1"}


# -- graph -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b,parent", [
    ("/work/api", "/work/web", "/work"),           # siblings
    ("/work/mono", "/work/mono/pkg", "/work/mono"),  # one inside the other
    ("/work/a/x", "/srv/b/x", None),               # nothing shared
    ("/home/u/a/deep/x", "/home/u/b", None),       # cousins are not linked by path
    ("demo", "/work/demo", None),
])
def test_shared_parent(a, b, parent):
    assert overview.shared_parent(a, b) == parent


def test_graph_groups_by_project_and_links_shared_concepts_and_parents(call):
    for sid, project, cwd in (("a1", "/work/api", "/work/api"), ("a2", "/work/api", "/work/api"),
                              ("w1", "/work/web", "/work/web"), ("d1", "demo", "/home/u/demo")):
        call("agent_observe", sessionId=sid, hookType="post_tool_use", project=project, cwd=cwd,
             data={"tool_name": "Bash", "tool_input": "ls"})
    call("memory_save", content="Tokens expire after an hour", project="/work/api", concepts=["authentication", "tokens"])
    call("memory_save", content="The login form refreshes tokens", project="demo", concepts=["authentication", "forms"])
    call("memory_save", content="A memory without any project at all", concepts=["misc"])
    graph = call("viewer_graph")
    folders = {f["id"]: f for f in graph["folders"]}
    assert set(folders) == {"/work/api", "/work/web", "demo", overview.NO_PROJECT}
    api = folders["/work/api"]
    assert (api["sessions"], api["memories"], api["observations"]) == (2, 1, 2)
    assert folders["demo"]["path"] == "/home/u/demo" and folders["demo"]["label"] == "demo"
    assert "authentication" in api["concepts"]
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    by_pair = {frozenset(k): v for k, v in edges.items()}
    assert by_pair[frozenset({"/work/api", "/work/web"})]["parent"] == "/work"
    concept_edge = by_pair[frozenset({"/work/api", "demo"})]
    assert "authentication" in concept_edge["concepts"] and concept_edge["parent"] is None
    assert frozenset({"/work/web", "demo"}) not in by_pair
    assert call("viewer_graph", maxFolders=2)["truncated"] is True


def test_graph_keeps_the_strongest_edges_per_folder(call):
    for i in range(12):  # twelve siblings: 66 possible parent links
        call("memory_save", content=f"note number {i} about something", project=f"/srv/app{i}")
    graph = call("viewer_graph", edgesPerFolder=2)
    degree: dict[str, int] = {}
    for e in graph["edges"]:
        for end in (e["source"], e["target"]):
            degree[end] = degree.get(end, 0) + 1
    assert len(graph["folders"]) == 12 and 0 < len(graph["edges"]) < 66
    assert all(d >= 1 for d in degree.values()) and len(degree) == 12
