"""What the server derives from the same records must not depend on the process's string hash
seed (``PYTHONHASHSEED``, random by default): a set's order does. Where equally strong candidates
tie, the first seen wins, in every process; otherwise another process (a second request process,
the worker, a restart) derives something else from the same data, and what it writes churns.

Each test runs a snippet in fresh interpreters under several seeds and compares what they print."""

import json
import os
import subprocess
import sys

from conftest import SRC

SEEDS = ("1", "2", "3", "4", "5")


def printed_under_each_seed(snippet: str, *args: str) -> set[str]:
    outputs = set()
    for seed in SEEDS:
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(SRC)}
        done = subprocess.run([sys.executable, "-c", snippet, *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.add(done.stdout.strip())
    return outputs


_TOP_TERMS = """
import json, sys
from agentmemory_server.memory.summaries import top_terms
observations = [{"title": "", "narrative": text} for text in json.loads(sys.argv[1])]
print(json.dumps(top_terms(observations, 4)))
"""


def test_the_recurring_words_of_a_session_are_the_same_in_every_process():
    # Eight words recur equally often and four are kept (a session summary's terms, the
    # deterministic graph's concepts).
    texts = ["alpha bravo charlie delta echo foxtrot golf hotel", "hotel golf foxtrot echo delta charlie bravo alpha"]
    assert printed_under_each_seed(_TOP_TERMS, json.dumps(texts)) == {'["alpha", "bravo", "charlie", "delta"]'}


_WITH_RECORDS = """
import json, sys, tempfile
from agentmemory_server.kernel.registry import Ctx, call, unwrap
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.wiring import build_runtime

with tempfile.TemporaryDirectory() as tmp:
    rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider="none",
                                         auth="off"))
    try:
        ctx = Ctx(rt, source="test")
        for i, files in enumerate(json.loads(sys.argv[1])):
            unwrap(call(ctx, "agent_observe", {"sessionId": f"s{i}", "project": "shop", "content": f"edited batch {i}",
                                               "files": files, "timestamp": f"2026-11-01T10:0{i}:00Z"}))
        rt.db.flush()
        print(json.dumps(%s))
    finally:
        rt.close()
"""
# Ten files edited together, in two sessions: every file ties with every other.
TIED_FILES = json.dumps([[f"src/module_{name}.py" for name in "abcdefghij"]] * 2)
FIRST_THREE = '["src/module_a.py", "src/module_b.py", "src/module_c.py"]'


def test_the_project_profiles_key_files_are_the_same_in_every_process():
    snippet = _WITH_RECORDS % """[f["file"] for f in unwrap(call(ctx, "memory_profile", {"project": "shop"}))[0]
                                  ["profile"]["topFiles"]][:3]"""
    assert printed_under_each_seed(snippet, TIED_FILES) == {FIRST_THREE}


def test_the_recurring_files_among_the_patterns_are_the_same_in_every_process():
    snippet = _WITH_RECORDS % """[p["pattern"] for p in unwrap(call(ctx, "patterns", {"project": "shop"}))[0]["patterns"]
                                  if p["kind"] == "file"][:3]"""
    assert printed_under_each_seed(snippet, TIED_FILES) == {FIRST_THREE}
