"""Images move out of hook payloads into the content-addressed image store (files beside a SQLite
database, rows of a PostgreSQL one): detection, the reference and modality kept on the observation, the authenticated image route,
reference counting through forgetting, the quota's oldest-first eviction, and export/import."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
import zlib
from pathlib import Path

import pytest

from agentmemory_server.adapters.web import create_app
from agentmemory_server.capture import images
from agentmemory_server.kernel.util import Clock
from agentmemory_server.storage.blobs import BlobStore
from conftest import hook


def png(seed: int, size: int = 8) -> bytes:
    """A real, valid PNG (a grey square whose shade depends on ``seed``)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([seed % 256]) * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(range(256)) * 2 + b"\xff\xd9"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- detection --------------------------------------------------------------------------------------------


def test_every_form_of_image_is_found_and_replaced():
    shot, photo, attached = png(1), JPEG, png(2)
    payload = {
        "tool_name": "screenshot",
        "tool_output": {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(shot)}},
        "notes": [f"data:image/jpeg;base64,{b64(photo)}", "plain text stays"],
        "image_data": b64(attached),
        "short": "iVBORw0KGgo",  # a signature alone is not an image
        "fake": "/9j/ starts like a JPEG but is prose, not base64! " * 3,
    }
    found = images.extract_images(payload)
    assert {i.id for i in found.images} == {sha(shot), sha(photo), sha(attached)}
    assert {i.mime for i in found.images} == {"image/png", "image/jpeg"}
    out = found.payload
    assert out["tool_output"]["source"]["data"] == f"[image sha256:{sha(shot)} image/png {len(shot)} bytes]"
    assert out["notes"][1] == "plain text stays" and out["short"] == "iVBORw0KGgo" and out["fake"].startswith("/9j/")
    assert images.modality(out, found.images) == "mixed"
    only = images.extract_images({"tool_name": "screenshot", "image_data": b64(shot)})
    assert images.modality(only.payload, only.images) == "image"


def test_a_data_url_inside_text_moves_to_the_store_and_leaves_the_text(client, rt):
    """A data URL inside a longer text (Markdown, a tool's output) is an image like a whole-field
    one: stored and served, its place in the text taken by the placeholder, so the record keeps
    no base64 (which the field limit would otherwise cut, losing the image). A data URL whose
    bytes are not an image, and bare base64 inside text, stay as they were."""
    shot, photo = png(70, size=64), JPEG
    not_an_image = "data:image/png;base64," + b64(b"just some text, not a picture at all" * 3)
    output = (f"Took the screenshot ![home](data:image/png;base64,{b64(shot)}) and the photo "
              f"DATA:IMAGE/JPEG;BASE64,{b64(photo)} then {not_an_image} and iVBORw0KGgo{'A' * 80} end")
    r = client.post("/agentmemory/observe", json=hook("s1", data={"tool_name": "Bash", "tool_output": output}))
    assert r.status_code == 201 and sorted(r.json["images"]) == sorted([sha(shot), sha(photo)])
    stored = client.get("/agentmemory/observations?sessionId=s1").json["observations"][0]
    text = stored["raw"]["tool_output"]
    assert text.startswith(f"Took the screenshot ![home]([image sha256:{sha(shot)} image/png {len(shot)} bytes]) and")
    assert f"[image sha256:{sha(photo)} image/jpeg {len(photo)} bytes] then {not_an_image} and iVBORw0KGgo" in text
    assert b64(shot) not in str(stored) and stored["modality"] == "mixed"
    assert client.get(f"/agentmemory/images/{sha(shot)}").data == shot
    assert client.get(f"/agentmemory/images/{sha(photo)}").data == photo


def test_image_path_is_read_only_inside_the_allowed_roots(tmp_path: Path):
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    (inside / "shot.png").write_bytes(png(3))
    (outside / "secret.png").write_bytes(png(4))
    (inside / "notes.txt").write_bytes(b"not an image")
    reader = images.confined_reader([inside], max_bytes=1 << 20)
    found = images.extract_images({"image_path": str(inside / "shot.png"), "imagePath": str(outside / "secret.png"),
                                   "other": {"image_path": str(inside / "notes.txt")}}, reader)
    assert [i.id for i in found.images] == [sha(png(3))]
    assert found.payload["imagePath"] == str(outside / "secret.png")  # left as text, never read
    assert found.payload["other"]["image_path"].endswith("notes.txt")
    traversal = images.extract_images({"image_path": str(inside / ".." / "elsewhere" / "secret.png")}, reader)
    assert traversal.images == []


# -- the store ---------------------------------------------------------------------------------------------


def screenshot_hook(session: str, data: bytes, when: str = "2026-11-01T10:00:00Z", **extra):
    return hook(session, timestamp=when, data={"tool_name": "Screenshot", "tool_input": {"url": "http://x"},
                                                "tool_response": {"image": f"data:image/png;base64,{b64(data)}"},
                                                **extra})


def image_file(rt, image_id: str) -> Path:
    return rt.db.path.parent / "images" / image_id[:2] / image_id


def test_an_image_moves_to_the_store_and_is_served(client, rt, backend):
    shot = png(5)
    r = client.post("/agentmemory/observe", json=screenshot_hook("s1", shot))
    assert r.status_code == 201 and r.json["images"] == [sha(shot)]
    obs = client.get("/agentmemory/observations?sessionId=s1").json["observations"][0]
    assert obs["images"] == [{"id": sha(shot), "mime": "image/png", "bytes": len(shot), "field": "tool_response.image"}]
    assert obs["imageRef"] == sha(shot) and obs["modality"] == "mixed"
    assert b64(shot) not in str(obs) and f"[image sha256:{sha(shot)}" in obs["raw"]["tool_response"]["image"]
    if backend == "sqlite":  # a file beside the database
        assert image_file(rt, sha(shot)).read_bytes() == shot
    else:  # in the database, so that every node serves it
        assert not image_file(rt, sha(shot)).exists() and rt.db.reader().images.read(sha(shot)) == shot
    got = client.get(f"/agentmemory/images/{sha(shot)}")
    assert got.status_code == 200 and got.mimetype == "image/png" and got.data == shot
    missing = client.get("/agentmemory/images/" + "0" * 64)
    assert missing.status_code == 404 and missing.json["code"] == "image_not_found"


def test_the_image_route_needs_the_token(make_runtime):
    rt = make_runtime(secret="s3cret-token-value")
    client = create_app(runtime=rt).test_client()
    auth = {"Authorization": "Bearer s3cret-token-value"}
    client.post("/agentmemory/observe", json=screenshot_hook("s1", png(6)), headers=auth)
    assert client.get(f"/agentmemory/images/{sha(png(6))}").status_code == 401
    assert client.get(f"/agentmemory/images/{sha(png(6))}", headers=auth).data == png(6)


def test_an_image_is_served_only_to_a_caller_that_may_read_a_record_showing_it(make_runtime):
    """An image's id is the hash of its bytes: a caller limited to some records (a principal's
    token, its projects) used to get any stored image by id, another project's screenshot too."""
    admin_secret = "admin-secret-for-image-access"
    client = create_app(runtime=make_runtime(secret=admin_secret)).test_client()
    admin = {"Authorization": f"Bearer {admin_secret}"}

    def token(principal: str, projects: list[str]) -> dict[str, str]:
        made = client.post("/agentmemory/tokens", json={"principal": principal, "projects": projects}, headers=admin)
        assert made.status_code == 201, made.json
        return {"Authorization": f"Bearer {made.json['token']}"}

    beta, alpha, eve = token("bot", ["beta"]), token("bot", ["alpha"]), token("eve", ["*"])
    shot = png(71)
    stored = client.post("/agentmemory/observe", json={**screenshot_hook("s-beta", shot), "project": "beta"}, headers=beta)
    assert stored.status_code == 201 and stored.json["images"] == [sha(shot)], stored.json
    url = f"/agentmemory/images/{sha(shot)}"
    assert client.get(url, headers=beta).data == shot and client.get(url, headers=admin).data == shot
    for caller in (alpha, eve):  # the same principal in another project; another principal
        refused = client.get(url, headers=caller)
        assert refused.status_code == 404 and refused.json["code"] == "image_not_found", refused.json
    # Once a record of eve's shows the same bytes, the image is hers to see as well.
    again = client.post("/agentmemory/observe", json={**screenshot_hook("s-eve", shot), "project": "p"}, headers=eve)
    assert again.status_code == 201, again.json
    assert client.get(url, headers=eve).data == shot


def test_the_same_image_is_stored_once_and_released_when_forgotten(make_runtime):
    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    client = create_app(runtime=rt).test_client()
    shot = png(7)
    first = client.post("/agentmemory/observe", json=screenshot_hook("a", shot)).json["observationId"]
    client.post("/agentmemory/observe", json=screenshot_hook("b", shot))
    assert rt.db.reader().images.get(sha(shot))["refs"] == 2
    client.post("/agentmemory/forget", json={"sessionId": "a", "observationIds": [first]})
    assert rt.db.reader().images.get(sha(shot))["refs"] == 1
    client.post("/agentmemory/forget", json={"sessionId": "b"})
    store = rt.services["images"]
    assert store.sweep()["removed"] == 0  # unreferenced, but still within the grace period
    now[0] += 31
    assert store.sweep()["removed"] == 1
    assert client.get(f"/agentmemory/images/{sha(shot)}").status_code == 404
    assert not image_file(rt, sha(shot)).exists() and rt.db.reader().images.read(sha(shot)) is None


def test_the_quota_evicts_the_oldest_images_and_says_so(make_runtime):
    now = [1_800_000_000.0]
    shots = [png(10 + i, size=64) for i in range(3)]
    rt = make_runtime(clock=Clock(lambda: now[0]), image_store_max_bytes=len(shots[0]) * 2 + 10)
    client = create_app(runtime=rt).test_client()
    for i, shot in enumerate(shots):
        client.post("/agentmemory/observe", json=screenshot_hook(f"s{i}", shot, when=f"2026-11-01T10:00:0{i}Z"))
        now[0] += 1
    now[0] += 31
    assert rt.services["images"].sweep() == {"removed": 0, "evicted": 1}
    gone = client.get(f"/agentmemory/images/{sha(shots[0])}")
    assert gone.status_code == 410 and "AGENTMEMORY_IMAGE_STORE_MAX_BYTES" in gone.json["error"]
    assert all(client.get(f"/agentmemory/images/{sha(s)}").status_code == 200 for s in shots[1:])
    obs = client.get("/agentmemory/observations?sessionId=s0").json["observations"][0]
    assert obs["imageRef"] == sha(shots[0])  # the record keeps its reference
    assert rt.db.reader().images.read(sha(shots[0])) is None and not image_file(rt, sha(shots[0])).exists()
    health = client.get("/agentmemory/health").json["images"]
    assert health["evicted"] == 1 and health["images"] == 3 and health["bytes"] <= health["quotaBytes"]
    # The same image sent again is stored again.
    client.post("/agentmemory/observe", json=screenshot_hook("again", shots[0], when="2026-11-02T00:00:00Z"))
    assert client.get(f"/agentmemory/images/{sha(shots[0])}").status_code == 200


def test_bytes_no_row_owns_are_swept_and_health_says_where_bytes_are_kept(make_runtime, backend):
    rt = make_runtime()
    client = create_app(runtime=rt).test_client()
    kept = png(40)
    client.post("/agentmemory/observe", json=screenshot_hook("s", kept))
    # What a transaction that failed after writing its file leaves behind, and a crash's temp file.
    stray = BlobStore(rt.db.path.parent / "images")
    lost = stray.put(png(41))
    temp = stray.root / lost[:2] / ".tmp-crashed"
    temp.write_bytes(b"half")
    old = time.time() - 3600
    for path in (image_file(rt, lost), temp, *([image_file(rt, sha(kept))] if backend == "sqlite" else [])):
        os.utime(path, (old, old))
    with rt.db.transaction("image_sweep") as tx:
        removed = tx.images.sweep_leftovers(time.time() - 60)
    health = client.get("/agentmemory/health").json["images"]
    if backend == "sqlite":
        assert removed == 2 and not image_file(rt, lost).exists() and not temp.exists()
        assert health["storedIn"] == str(rt.db.path.parent / "images")
    else:  # bytes live in their rows, written in one transaction: nothing can be left over
        assert removed == 0 and health["storedIn"] == "database"
    assert client.get(f"/agentmemory/images/{sha(kept)}").data == kept


@pytest.mark.postgresql_only
def test_an_image_stored_as_a_file_before_bytes_moved_into_postgresql_is_still_served(make_runtime, backend):
    """Rows written before PostgreSQL migration 6 have no bytes: their file in the node's images
    directory (a shared volume, as the docs said then) answers, and goes when the row goes."""
    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    client = create_app(runtime=rt).test_client()
    shot = png(42)
    client.post("/agentmemory/observe", json=screenshot_hook("old", shot))
    with rt.db.transaction("test") as tx:  # as an earlier version left it: the file, no bytes in the row
        tx.conn.execute("UPDATE images SET data = NULL")
    BlobStore(rt.db.path.parent / "images").put(shot)
    assert client.get(f"/agentmemory/images/{sha(shot)}").data == shot
    client.post("/agentmemory/forget", json={"sessionId": "old"})
    now[0] += 31
    assert rt.services["images"].sweep()["removed"] == 1
    assert not image_file(rt, sha(shot)).exists()


def test_images_round_trip_through_export_and_import(make_runtime, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "a"))
    client = create_app(runtime=source).test_client()
    shot, photo = png(20), JPEG
    client.post("/agentmemory/observe", json=screenshot_hook("s1", shot))
    client.post("/agentmemory/observe", json=hook("s1", timestamp="2026-11-01T10:00:05Z",
                                                  data={"tool_name": "Read", "image_data": b64(photo)}))
    export = client.get("/agentmemory/export").json
    assert set(export["images"]) == {sha(shot), sha(photo)}
    assert base64.b64decode(export["images"][sha(shot)]["data"]) == shot
    target = make_runtime(data_dir=str(tmp_path / "b"))
    fresh = create_app(runtime=target).test_client()
    r = fresh.post("/agentmemory/import", json={"exportData": export, "strategy": "merge"})
    assert r.status_code == 200 and r.json["counts"]["images"]["imported"] == 2
    assert fresh.get(f"/agentmemory/images/{sha(shot)}").data == shot
    assert fresh.get(f"/agentmemory/images/{sha(photo)}").data == photo
    assert target.db.reader().images.get(sha(photo))["refs"] == 1
    again = fresh.get("/agentmemory/export").json
    assert again["images"] == export["images"]


def test_an_import_with_tampered_image_bytes_is_refused(client):
    bad = {"version": "agentmemory-python/1", "images": {sha(png(1)): {"mime": "image/png", "data": b64(png(2))}}}
    r = client.post("/agentmemory/import", json={"exportData": bad})
    assert r.status_code == 400 and "do not hash" in r.json["error"]


def test_cli_export_and_import_carry_images(make_runtime, tmp_path):
    from agentmemory_server.kernel.registry import Ctx
    from agentmemory_server.operations import maintenance

    source = make_runtime(data_dir=str(tmp_path / "a"))
    create_app(runtime=source).test_client().post("/agentmemory/observe", json=screenshot_hook("s1", png(30)))
    out = tmp_path / "export.json"
    with open(out, "w", encoding="utf-8") as handle:
        maintenance.stream_export(source, handle)
    target = make_runtime(data_dir=str(tmp_path / "b"))
    result = maintenance.import_document(Ctx(target, source="cli"), maintenance.load_export(out), "merge")
    assert result["counts"]["images"]["imported"] == 1
    assert target.services["images"].read(sha(png(30)))[1] == png(30)


@pytest.mark.parametrize("strategy", ["merge", "replace"])
def test_json_lines_export_and_import_carry_images(make_runtime, tmp_path, strategy):
    from agentmemory_server.kernel.registry import Ctx
    from agentmemory_server.operations import maintenance

    source = make_runtime(data_dir=str(tmp_path / "a"))
    create_app(runtime=source).test_client().post("/agentmemory/observe", json=screenshot_hook("s1", png(31)))
    out = tmp_path / "export.jsonl"
    with open(out, "w", encoding="utf-8") as handle:
        maintenance.stream_export(source, handle, lines=True)
    assert any('"images"' in line for line in out.read_text().splitlines()[1:])
    target = make_runtime(data_dir=str(tmp_path / "b"))
    result = maintenance.import_lines(Ctx(target, source="cli"), out, strategy)
    assert result["counts"]["images"]["imported"] == 1
    assert target.services["images"].read(sha(png(31)))[1] == png(31)
    assert target.db.reader().images.get(sha(png(31)))["refs"] == 1


@pytest.mark.parametrize("strategy", ["replace"])
def test_replace_import_releases_the_old_images(make_runtime, tmp_path, strategy):
    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    client = create_app(runtime=rt).test_client()
    client.post("/agentmemory/observe", json=screenshot_hook("old", png(40)))
    client.post("/agentmemory/import", json={"exportData": {"version": "agentmemory-python/1"}, "strategy": strategy})
    now[0] += 31
    assert rt.services["images"].sweep()["removed"] == 1


# -- the HuggingFace backup carries the image store ---------------------------------------------------


def test_images_round_trip_through_backup_and_restore_against_the_hub(hf_hub, tmp_path):
    import json
    import subprocess

    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.storage.sqlite import hf_sync as sync
    from agentmemory_server.wiring import build_runtime
    from conftest import HUB_REPO, run_sync, sync_env

    def result(proc: subprocess.CompletedProcess) -> dict:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    source = tmp_path / "source"
    shots = [png(50), png(51)]
    rt = build_runtime(Settings.from_env({}, data_dir=str(source), background_jobs=False, auth="off",
                                         embedding_provider="none"))
    client = create_app(runtime=rt).test_client()
    for i, shot in enumerate(shots):
        client.post("/agentmemory/observe", json=screenshot_hook(f"s{i}", shot, when=f"2026-11-01T10:00:0{i}Z"))
    rt.close()
    uploaded = result(run_sync(sync_env(hf_hub, tmp_path, source), "backup"))
    assert uploaded["images"] == {"images": 2, "uploaded": 2, "deleted": 0, "missingLocally": 0}
    remote = hf_hub.files(HUB_REPO)
    assert {name for name in remote if name.startswith("images/")} == {sync.remote_image_name(sha(s)) for s in shots}
    assert remote[sync.remote_image_name(sha(shots[0]))] == shots[0]

    target = tmp_path / "restored"
    restored = result(run_sync(sync_env(hf_hub, tmp_path, target), "restore"))
    assert restored["status"] == "restored" and restored["images"] == {"fetched": 2, "missing": 0}
    again = build_runtime(Settings.from_env({}, data_dir=str(target), background_jobs=False, auth="off",
                                            embedding_provider="none"))
    try:
        served = create_app(runtime=again).test_client()
        assert [served.get(f"/agentmemory/images/{sha(s)}").data for s in shots] == shots
        # Forgetting one image's observation drops it from the next backup's image set.
        served.post("/agentmemory/forget", json={"sessionId": "s0"})
        with again.db.transaction("test") as tx:  # past the grace period, as the sweep would
            tx.images.delete([sha(shots[0])])
    finally:
        again.close()
    env = sync_env(hf_hub, tmp_path, target)
    second = result(run_sync(env, "backup"))
    assert second["images"]["deleted"] == 1 and second["images"]["uploaded"] == 0
    assert {n for n in hf_hub.files(HUB_REPO) if n.startswith("images/")} == {sync.remote_image_name(sha(shots[1]))}


def test_an_export_too_big_for_one_answer_is_a_413_saying_where_it_stopped(make_runtime):
    """Images make GET /export big; built in memory it must stop at a bound (upstream 0.9.30's
    413 {oversized, bytes, limitBytes, stoppedAt}) instead of growing the server without one."""
    import os

    rt = make_runtime(max_export_bytes=60_000)
    client = create_app(runtime=rt).test_client()
    photos = [b"\xff\xd8\xff\xe0" + os.urandom(15_000) + b"\xff\xd9" for _ in range(3)]
    for i, photo in enumerate(photos):
        client.post("/agentmemory/observe", json=hook(f"p{i}", timestamp=f"2026-11-01T10:00:0{i}Z",
                                                      data={"tool_name": "Read", "image_data": b64(photo)}))
    r = client.get("/agentmemory/export")
    assert r.status_code == 413 and r.json["code"] == "export_too_large"
    details = r.json["details"]
    assert details["oversized"] is True and details["limitBytes"] == 60_000 and details["bytes"] > 60_000
    assert details["stoppedAt"].startswith("images.") and details["setting"] == "AGENTMEMORY_MAX_EXPORT_BYTES"
    page = client.get("/agentmemory/export?maxSessions=1")  # a page of one session fits
    assert page.status_code == 200 and len(page.json["images"]) == 1 and page.json["pagination"]["hasMore"]


# -- local snapshots carry the image store ------------------------------------------------------------


def test_a_local_snapshot_carries_its_images_restores_them_and_rotation_drops_them(tmp_path):
    """A screenshot's observation is snapshotted, then forgotten and its image swept; restoring the
    snapshot brings back both the observation and the image. Rotating the snapshot out removes
    the images no kept snapshot knows."""
    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.storage.sqlite import local_backup
    from agentmemory_server.wiring import build_runtime

    data, backups = tmp_path / "data", tmp_path / "backups"
    shot, other = png(60), png(61)

    def runtime():
        return build_runtime(Settings.from_env({}, data_dir=str(data), background_jobs=False, auth="off",
                                               embedding_provider="none"))

    rt = runtime()
    try:
        client = create_app(runtime=rt).test_client()
        client.post("/agentmemory/observe", json=screenshot_hook("kept", shot))
        first = local_backup.take(rt.db.path, backups, keep=1, reserve_bytes=0)
        assert first["images"] == {"images": 1, "added": 1, "missing": 0, "pruned": 0}
        assert (backups / "images" / sha(shot)[:2] / sha(shot)).read_bytes() == shot
        client.post("/agentmemory/forget", json={"sessionId": "kept"})
        with rt.db.transaction("test") as tx:  # past the grace period, as the sweep would
            tx.images.delete([sha(shot)])
        assert not image_file(rt, sha(shot)).exists()
        db_path = rt.db.path
    finally:
        rt.close()
    restored = local_backup.restore_last_good(db_path, backups, None, force=True)
    assert restored["source"] == "local" and restored["images"] == {"restored": 1, "missing": 0}
    rt = runtime()
    try:
        client = create_app(runtime=rt).test_client()
        assert [o["sessionId"] for o in client.get("/agentmemory/observations?sessionId=kept").json["observations"]]
        assert client.get(f"/agentmemory/images/{sha(shot)}").data == shot
        # The next snapshot no longer knows the first image once it is forgotten and swept; with
        # keep=1 the first snapshot rotates out and takes that image with it, the new one's stays.
        client.post("/agentmemory/forget", json={"sessionId": "kept"})
        with rt.db.transaction("test") as tx:
            tx.images.delete([sha(shot)])
        client.post("/agentmemory/observe", json=screenshot_hook("new", other))
        second = local_backup.take(rt.db.path, backups, keep=1, reserve_bytes=0)
    finally:
        rt.close()
    assert len(second["pruned"]) == 1 and second["images"]["pruned"] == 1
    assert [p.name for p in (backups / "images").rglob("*") if p.is_file()] == [sha(other)]
