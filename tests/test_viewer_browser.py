"""The viewer in a real browser: Debian's Chromium, driven by Playwright, against real server
processes seeded through REST. Every tab renders seeded data, live updates arrive over the
WebSocket, stored HTML never runs, the token prompt works, and 10k records stay paginated.

Screenshots of every tab are saved under pytest's temp dir (the path is printed; run with -s),
or in $VIEWER_SCREENSHOTS."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from conftest import LiveServer, hook, post

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TABS = ["dashboard", "sessions", "memories", "graph", "timeline", "lessons", "slots", "replay"]

# Stored HTML that would set window.__xss (or open a dialog) if any of it were parsed as markup.
XSS_IMG = '<img src=x onerror="window.__xss=1;alert(1)">'
XSS_SCRIPT = "<script>window.__xss=2</script>"
XSS_SVG = '"><svg onload="window.__xss=3">'
SECRET = "viewer-test-secret"


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} not found: install the Debian package chromium "
                    "(tests/run.sh apt-installs it when run as root)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    # VIEWER_SCREENSHOTS keeps them somewhere stable (pytest prunes old temp dirs).
    chosen = os.environ.get("VIEWER_SCREENSHOTS")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("viewer-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nviewer screenshots: {directory}")
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("viewer-server"), {}, [])
    try:
        srv.seeded = seed(srv, {})
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("viewer-secured"), {"AGENTMEMORY_SECRET": SECRET}, [])
    try:
        post(srv.api("/observe"), hook("locked-session", project="/work/locked"),
             headers={"Authorization": f"Bearer {SECRET}"})
        yield srv
    finally:
        srv.stop()


class Watched:
    """A page plus everything that must not happen on it: console errors, page errors, dialogs."""

    def __init__(self, page: Page):
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

    def check(self) -> None:
        assert self.problems == []
        assert self.page.evaluate("window.__xss") is None


@pytest.fixture
def watched(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    w = Watched(context.new_page())
    yield w
    try:
        w.check()
    finally:
        context.close()


# -- seeding through REST ---------------------------------------------------------------------------------


def seed(srv: LiveServer, headers: dict) -> dict:
    """Two projects, sessions with XSS-laden titles and observations, a memory with two versions,
    a lesson and a slot."""
    def send(path: str, body: dict, ok=(200, 201)) -> requests.Response:
        r = post(srv.api(path), body, headers=headers)
        assert r.status_code in ok, r.text
        return r

    send("/session/start", {"sessionId": "sess-alpha", "project": "/work/alpha", "cwd": "/work/alpha",
                            "title": f"{XSS_IMG}Alpha parser session"})
    for i in range(6):
        send("/observe", hook("sess-alpha", "prompt_submit", project="/work/alpha", cwd="/work/alpha",
                              timestamp=f"2026-10-01T09:0{i}:00Z",
                              data={"prompt": f"{XSS_SCRIPT}step {i} of the parser fix"}))
    send("/observe", {"sessionId": "sess-alpha", "hookType": "observation", "project": "/work/alpha",
                      "title": f"{XSS_SVG}alpha note", "content": f"{XSS_IMG} the tokenizer drops escapes",
                      "concepts": ["parsing", "tokenizer"], "timestamp": "2026-10-01T09:30:00Z"})
    for i in range(3):
        send("/observe", hook("sess-beta", project="/work/beta", cwd="/work/beta",
                              timestamp=f"2026-10-02T10:0{i}:00Z",
                              data={"tool_name": "Bash", "tool_input": {"command": f"make beta-{i}"},
                                    "tool_output": "ok"}))
    v1 = send("/remember", {"content": f"{XSS_IMG} The parser must keep backslash escapes in strings",
                            "project": "/work/alpha", "concepts": ["parsing", "escapes"]}).json()["memory"]
    v2 = send("/remember", {"content": f"{XSS_IMG} The parser must keep backslash escapes in strings and chars",
                            "project": "/work/alpha", "concepts": ["parsing", "escapes"]}).json()
    assert v2["superseded"] == v1["id"]
    send("/remember", {"content": "Beta builds reuse the parsing cache", "project": "/work/beta",
                       "concepts": ["parsing", "cache"]})
    send("/lessons", {"content": f"{XSS_SCRIPT}Always run the parser fuzzer", "confidence": 0.8,
                      "project": "/work/alpha", "tags": ["parser"]})
    send("/slot", {"label": "viewer_slot", "content": f"{XSS_IMG}pinned slot text",
                   "description": "seeded by the viewer tests", "scope": "global"})
    send("/slot", {"label": "alpha_notes", "content": "alpha keeps its fixtures in tests/data",
                   "scope": "project", "project": "/work/alpha"})
    return {"memory_v1": v1["id"], "memory_v2": v2["memory"]["id"]}


def open_viewer(w: Watched, srv: LiveServer, tab: str = "dashboard") -> Page:
    w.page.goto(f"{srv.url}/viewer#/{tab}")
    expect(w.page.locator("#conn-text")).to_have_text("live", timeout=15_000)
    return w.page


def show(page: Page, tab: str) -> None:
    page.click(f"nav button[data-tab={tab}]")
    expect(page.locator(f"#tab-{tab}")).to_be_visible()


# -- tests ------------------------------------------------------------------------------------------------------


def test_every_tab_renders_seeded_data(watched, server, shots):
    page = open_viewer(watched, server)
    expect(page.locator('[data-count="sessions"] .n')).to_have_text("2")
    expect(page.locator('[data-count="memories"] .n')).to_have_text("3")
    expect(page.locator("#tab-dashboard")).to_contain_text("healthy")
    page.screenshot(path=str(shots / "dashboard.png"))

    show(page, "sessions")
    row = page.locator('#tab-sessions tr[data-id="sess-alpha"]')
    expect(row).to_contain_text("Alpha parser session")
    row.click()
    expect(page.locator("#tab-sessions .panel")).to_contain_text("Observations (7)")
    page.screenshot(path=str(shots / "sessions.png"))

    show(page, "memories")
    page.locator(f'#tab-memories tr[data-id="{server.seeded["memory_v2"]}"]').click()
    chain = page.locator("#tab-memories .chain .version")
    expect(chain).to_have_count(2)
    expect(page.locator("#tab-memories .chain")).to_contain_text("superseded by")
    page.screenshot(path=str(shots / "memories.png"))

    show(page, "graph")
    expect(page.locator("#tab-graph .legend")).to_contain_text("alpha")
    expect(page.locator("#tab-graph .legend")).to_contain_text("beta")
    nodes = page.evaluate("TABS.graph.nodes.map(n => ({id: n.id, x: n.x, y: n.y, color: n.color}))")
    assert {n["id"] for n in nodes} == {"/work/alpha", "/work/beta"}
    assert len({n["color"] for n in nodes}) == 2
    assert all(n["color"] == page.evaluate("folderColor", n["id"]) for n in nodes)
    box = page.locator("#graph-canvas").bounding_box()
    expect(page.locator("#graph-canvas")).to_have_attribute("data-settled", "true")
    alpha = page.evaluate("(() => { const n = TABS.graph.nodes.find(n => n.id === '/work/alpha'); return {x: n.x, y: n.y}; })()")
    page.mouse.click(box["x"] + alpha["x"], box["y"] + alpha["y"])
    expect(page.locator("#tab-graph .panel")).to_contain_text("/work/alpha")
    page.screenshot(path=str(shots / "graph.png"))

    show(page, "timeline")
    expect(page.locator("#tab-timeline .vlist")).to_contain_text("step 5 of the parser fix")
    page.locator("#tab-timeline .vrow", has_text="alpha note").click()
    expect(page.locator("#tab-timeline .panel")).to_contain_text("the tokenizer drops escapes")
    page.screenshot(path=str(shots / "timeline.png"))
    anchor = page.locator("#tab-timeline input[aria-label=anchor]")
    anchor.fill("tokenizer escapes")
    anchor.press("Enter")
    expect(page.locator("#tab-timeline .panel")).to_contain_text("Around “tokenizer escapes”")  # POST /timeline
    expect(page.locator("#tab-timeline .panel li.selected")).to_contain_text("alpha note")
    assert page.evaluate("features.timeline") is not False

    for tab, item in (("lessons", "#tab-lessons .lesson"), ("slots", "#tab-slots .slots .panel")):  # seeded data
        show(page, tab)
        expect(page.locator(item).first).to_be_visible()
        page.screenshot(path=str(shots / f"{tab}.png"))

    show(page, "replay")
    page.select_option("#tab-replay select[aria-label=session]", "sess-alpha")
    expect(page.locator("#replay-counter")).to_have_text("step 1 / 7")
    page.select_option("#tab-replay select[aria-label=speed]", "200")
    page.click("#tab-replay button[aria-label=play]")
    expect(page.locator("#replay-counter")).to_have_text("step 7 / 7", timeout=10_000)
    expect(page.locator("#tab-replay button[aria-label=play]")).to_be_visible()  # stopped at the end
    expect(page.locator("#tab-replay .replay-card")).to_contain_text("the tokenizer drops escapes")
    page.click("#tab-replay button[aria-label=first]")
    expect(page.locator("#replay-counter")).to_have_text("step 1 / 7")
    page.screenshot(path=str(shots / "replay.png"))


def test_lessons_tab_shows_confidence(watched, server, shots):
    page = open_viewer(watched, server, "lessons")
    lesson = page.locator("#tab-lessons .lesson", has_text="Always run the parser fuzzer")
    expect(lesson).to_contain_text("confidence 0.80")
    expect(lesson).to_contain_text(XSS_SCRIPT)
    page.screenshot(path=str(shots / "lessons-seeded.png"))


def test_slots_tab_shows_slot_content(watched, server, shots):
    page = open_viewer(watched, server, "slots")
    slot = page.locator('#tab-slots [data-label="viewer_slot"]')
    expect(slot).to_contain_text("pinned slot text")
    expect(slot).to_contain_text(XSS_IMG)
    page.screenshot(path=str(shots / "slots-seeded.png"))
    # a project's own slots: the page opens on the latest session's project, and another is chosen
    picker = page.get_by_label("project of the slots")
    expect(picker).not_to_have_value("")
    picker.fill("/work/alpha")
    picker.press("Enter")
    expect(page.locator('#tab-slots [data-label="alpha_notes"]')).to_contain_text("alpha keeps its fixtures")
    expect(slot).to_contain_text("pinned slot text")  # global slots show for every project
    picker.fill("/work/beta")
    picker.press("Enter")
    expect(page.locator('#tab-slots [data-label="alpha_notes"]')).to_have_count(0)


def test_an_observation_posted_over_rest_appears_live_within_2s(watched, server):
    page = open_viewer(watched, server)
    title = f"live check {uuid.uuid4().hex[:8]}"
    assert post(server.api("/observe"), hook("sess-live", "prompt_submit", project="/work/alpha",
                                             data={"prompt": title})).status_code == 201
    expect(page.locator("#live-feed")).to_contain_text(title, timeout=2000)
    show(page, "timeline")
    expect(page.locator("#tab-timeline .vlist")).to_contain_text(title)
    # Wait for the tab's first page (a seeded row only comes from it): today an event that lands
    # while that fetch is in flight is overwritten by the fetched rows, a known viewer race that is
    # not what this test is about.
    expect(page.locator("#tab-timeline .vlist")).to_contain_text("step 5 of the parser fix")
    second = f"timeline live {uuid.uuid4().hex[:8]}"
    # Stamped now, so it is the newest entry whatever today's date (the seeded memories are from today).
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    post(server.api("/observe"), hook("sess-live", "prompt_submit", project="/work/alpha", timestamp=now,
                                      data={"prompt": second}))
    expect(page.locator("#tab-timeline .vrow").first).to_contain_text(second, timeout=2000)
    # The LLM layer rewrites an observation later (`observation_updated`): the row changes in place.
    row_id = page.locator("#tab-timeline .vrow").first.get_attribute("data-id")
    record = requests.get(server.api("/observations"), params={"sessionId": "sess-live"}).json()["observations"]
    updated = {**next(o for o in record if o["id"] == row_id), "title": "rewritten by the model"}
    page.evaluate("(r) => live.receive(JSON.stringify({type: 'observation_updated', seq: live.lastSeq + 1, "
                  "ts: Date.now() / 1000, record: r}))", updated)
    expect(page.locator("#tab-timeline .vrow").first).to_contain_text("rewritten by the model")
    assert page.locator("#tab-timeline .vrow", has_text=second).count() == 0


def test_stored_html_never_runs(watched, server, shots):
    page = open_viewer(watched, server, "sessions")
    page.locator('#tab-sessions tr[data-id="sess-alpha"]').click()
    expect(page.locator("#tab-sessions .panel")).to_contain_text(XSS_SCRIPT + "step 0")
    show(page, "memories")
    page.locator(f'#tab-memories tr[data-id="{server.seeded["memory_v2"]}"]').click()
    expect(page.locator("#tab-memories .chain")).to_contain_text(XSS_IMG)
    show(page, "timeline")
    page.locator("#tab-timeline .vrow", has_text="alpha note").click()
    expect(page.locator("#tab-timeline .panel")).to_contain_text(XSS_SVG)
    show(page, "replay")
    page.select_option("#tab-replay select[aria-label=session]", "sess-alpha")
    page.click("#tab-replay button[aria-label=last]")
    expect(page.locator("#tab-replay .replay-card")).to_contain_text(XSS_IMG)
    for tab in TABS:
        show(page, tab)
    # A live event carrying markup is rendered as text too.
    post(server.api("/observe"), hook("sess-xss", "prompt_submit", project="/work/alpha",
                                      data={"prompt": f"live payload {XSS_IMG}{XSS_SVG}"}))
    show(page, "dashboard")
    expect(page.locator("#live-feed")).to_contain_text("live payload")
    assert page.locator('img[src="x"], svg, main script').count() == 0
    assert page.evaluate("window.__xss") is None  # and `watched` checks no dialog opened
    page.screenshot(path=str(shots / "xss-dashboard.png"))


def test_token_prompt_and_authenticated_stream(watched, secured, shots):
    page = watched.page
    data_calls: list[str] = []
    page.on("request", lambda r: data_calls.append(r.url) if "/agentmemory/" in r.url else None)
    page.goto(f"{secured.url}/viewer")
    overlay = page.locator("#auth")
    expect(overlay).to_be_visible()
    assert data_calls == []  # nothing is asked of the API before there is a token
    page.fill("#auth-token", "not-the-token")
    page.click("#auth-submit")
    expect(page.locator("#auth-error")).to_have_text("Wrong token, try again.")
    expect(overlay).to_be_visible()
    page.screenshot(path=str(shots / "auth-wrong-token.png"))
    page.fill("#auth-token", SECRET)
    page.click("#auth-submit")
    expect(overlay).to_be_hidden()
    expect(page.locator('[data-count="sessions"] .n')).to_have_text("1")
    expect(page.locator("#conn-text")).to_have_text("live")  # the WebSocket authenticated by message
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert requests.get(secured.api("/health"), headers=auth).json()["live"]["clients"] >= 1
    post(secured.api("/observe"), hook("locked-live", "prompt_submit", data={"prompt": "secured live event"}),
         headers=auth)
    expect(page.locator("#live-feed")).to_contain_text("secured live event", timeout=2000)
    assert data_calls and all("token" not in url for url in data_calls)  # the token travels in a header
    page.reload()  # asks once: the token is kept for the browser session
    expect(page.locator("#conn-text")).to_have_text("live")
    expect(overlay).to_be_hidden()
    page.click("#logout")
    expect(overlay).to_be_visible()
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0


def test_logging_out_asks_nothing_more_of_the_api_while_the_page_reloads(watched, secured):
    """Log out drops the token and reloads the page. The reload waits for the server; a refresh
    that ran meanwhile (every 5 s once the live stream is closed) asked the API without the token,
    and each of its requests was a 401 in the server's auth log (seen under load in the suite)."""
    import time

    page = watched.page
    page.goto(f"{secured.url}/viewer")
    page.fill("#auth-token", SECRET)
    page.click("#auth-submit")
    expect(page.locator("#conn-text")).to_have_text("live")
    asked: list[str] = []  # API requests sent without the token
    page.on("request", lambda r: asked.append(r.url) if "/agentmemory/" in r.url
            and "authorization" not in r.headers else None)

    def slow_reload(route):
        time.sleep(7)  # longer than the refresh interval: a refresh runs before the new page comes
        route.continue_()

    page.route(f"{secured.url}/viewer", slow_reload)
    page.click("#logout")
    expect(page.locator("#auth")).to_be_visible(timeout=20000)
    assert asked == [], asked  # the new page asks for the token before it asks the API anything


def test_dashboard_counts_refused_requests_and_observations_show_thumbnails(watched, tmp_path, shots):
    """A hook with a wrong token exits 0 and its event is lost: the dashboard must show the
    refusals. Images moved to the image store come back as thumbnails (fetched with the token)."""
    import base64

    from test_images import png

    srv = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": SECRET}, [])
    try:
        auth = {"Authorization": f"Bearer {SECRET}"}
        shot = png(99, size=32)
        post(srv.api("/observe"), hook("shots", project="/work/pics", data={
            "tool_name": "Screenshot", "tool_input": {"url": "http://localhost:3000"},
            "tool_response": {"image": "data:image/png;base64," + base64.b64encode(shot).decode()}}), headers=auth)
        for token in ("stale-token", None):  # a hook with an old token, one with none
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            assert post(srv.api("/observe"), hook("lost"), headers=headers).status_code == 401
        page = watched.page
        page.goto(f"{srv.url}/viewer")
        page.fill("#auth-token", SECRET)
        page.click("#auth-submit")
        expect(page.locator("#auth-denied")).to_contain_text("2 refused")
        expect(page.locator("#auth-denied")).to_contain_text("/agentmemory/observe")
        expect(page.locator("#capture-inbox")).to_contain_text("0 dead letters")
        page.screenshot(path=str(shots / "dashboard-refused.png"))
        show(page, "sessions")
        page.locator('#tab-sessions tr[data-id="shots"]').click()
        thumb = page.locator("#tab-sessions .thumbs img")
        expect(thumb).to_have_count(1)
        expect(thumb).to_have_attribute("src", "data:image/png;base64," + base64.b64encode(shot).decode())
        assert page.evaluate("document.querySelector('#tab-sessions .thumbs img').naturalWidth") == 32
        page.screenshot(path=str(shots / "thumbnail.png"))
    finally:
        srv.stop()


def test_polling_fallback_then_reconnect(watched, tmp_path):
    from websockets.sync.client import connect

    srv = LiveServer(tmp_path, {"AGENTMEMORY_MAX_VIEWERS": "1"}, [])
    try:
        post(srv.api("/observe"), hook("poll-1"))
        with connect(srv.url.replace("http", "ws") + "/stream/mem-live/viewer", open_timeout=10) as blocker:
            blocker.recv(timeout=10)  # the one viewer slot is taken: the page's socket is refused
            page = watched.page
            page.goto(f"{srv.url}/viewer")
            expect(page.locator("#conn-text")).to_contain_text("AGENTMEMORY_MAX_VIEWERS", timeout=15_000)
            expect(page.locator('[data-count="sessions"] .n')).to_have_text("1")
            post(srv.api("/observe"), hook("poll-2"))
            expect(page.locator('[data-count="sessions"] .n')).to_have_text("2", timeout=15_000)  # by polling
        expect(page.locator("#conn-text")).to_have_text("live", timeout=40_000)  # the backoff retry gets in
        post(srv.api("/observe"), hook("poll-3", "prompt_submit", data={"prompt": "back on the stream"}))
        expect(page.locator("#live-feed")).to_contain_text("back on the stream", timeout=2000)
    finally:
        srv.stop()


def test_ten_thousand_records_stay_paginated(browser, tmp_path, shots):
    srv = LiveServer(tmp_path, {}, [])
    try:
        sessions, observations = [], {}
        for s in range(100):
            sid = f"bulk-{s:03d}"
            project = f"/work/bulk/p{s % 10}"
            sessions.append({"id": sid, "project": project, "cwd": project, "startedAt": f"2026-09-01T00:{s // 60:02d}:{s % 60:02d}.000Z",
                             "updatedAt": "2026-09-02T00:00:00.000Z", "status": "completed", "observationCount": 100})
            observations[sid] = [{"id": f"obs_bulk_{s:03d}_{i:03d}", "sessionId": sid, "project": project,
                                  "timestamp": f"2026-09-0{1 + s // 60}T{i // 60:02d}:{i % 60:02d}:{s % 60:02d}.000Z",
                                  "hookType": "post_tool_use", "type": "command_run",
                                  "title": f"bulk step {s:03d}-{i:03d}", "narrative": "make test", "concepts": [f"c{s % 7}"],
                                  "files": [], "importance": 5} for i in range(100)]
        export = {"version": "agentmemory-python/1", "sessions": sessions, "observations": observations}
        r = post(srv.api("/import"), {"exportData": export})
        assert r.status_code == 200 and r.json()["imported"] == 10_100
        w = Watched(browser.new_page(viewport={"width": 1400, "height": 900}))
        try:
            page = open_viewer(w, srv, "timeline")
            expect(page.locator("#tab-timeline .toolbar")).to_contain_text("10,000 entries")
            assert page.locator("#tab-timeline .vrow").count() < 100  # only the visible rows exist
            page.eval_on_selector("#tab-timeline .vlist", "el => { el.scrollTop = el.scrollHeight; }")
            expect(page.locator("#tab-timeline .vlist")).to_contain_text("bulk step 000-000")  # the oldest
            assert page.locator("#tab-timeline .vrow").count() < 100
            page.screenshot(path=str(shots / "timeline-10k.png"))
            show(page, "sessions")
            expect(page.locator("#tab-sessions .pager")).to_contain_text("1–50 of 100")
            page.click("#tab-sessions .pager button:has-text('Next')")
            expect(page.locator("#tab-sessions .pager")).to_contain_text("51–100 of 100")
            assert page.locator("#tab-sessions tbody tr").count() == 50
            show(page, "graph")
            expect(page.locator("#tab-graph .toolbar")).to_contain_text("10 folders")
            expect(page.locator("#graph-canvas")).to_have_attribute("data-settled", "true")
            page.screenshot(path=str(shots / "graph-10k.png"))
            show(page, "dashboard")
            expect(page.locator('[data-count="observations"] .n')).to_have_text("10,000")
            w.check()
        finally:
            w.page.close()
    finally:
        srv.stop()


def test_dashboard_shows_model_tokens_per_day_and_feature(watched, tmp_path, fake_anthropic, shots):
    from conftest import ANTHROPIC_TEST_KEY, wait_for
    from llm_support import responder

    fake_anthropic.responder = responder()
    srv = LiveServer(tmp_path, {"AGENTMEMORY_LLM_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": ANTHROPIC_TEST_KEY,
                                "ANTHROPIC_BASE_URL": fake_anthropic.url, "AGENTMEMORY_AUTO_COMPRESS": "true",
                                "AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET": "500000"}, [])
    try:
        post(srv.api("/observe"), hook("tok-1", data={"tool_name": "Edit", "tool_input": {"file_path": "src/a.py"},
                                                      "tool_output": "ok"}))

        def accounted() -> dict | None:
            today = requests.get(srv.api("/health"), timeout=10).json()["llm"]["tokens"]["today"]
            return today if today["calls"] else None

        tokens = wait_for(accounted, message="the compression call was never made and accounted")
        page = open_viewer(watched, srv)
        panel = page.locator("#model-tokens")
        expect(panel).to_contain_text("anthropic · claude-haiku-4-5")
        expect(page.locator("#token-budget")).to_contain_text(f"{tokens['totalTokens']:,} of 500,000 tokens used today")
        today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        expect(panel.locator(f'tr[data-day="{today}"]')).to_contain_text(f"{tokens['totalTokens']:,}")
        row = panel.locator('tr[data-feature="compress"]')
        expect(row).to_contain_text("model")
        expect(row).to_contain_text(f"{tokens['totalTokens']:,}")
        expect(panel.locator('tr[data-feature="graph"]')).to_contain_text("off")
        page.screenshot(path=str(shots / "dashboard-model-tokens.png"))
    finally:
        srv.stop()
