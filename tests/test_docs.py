"""The documentation contract: README and AGENTS.md agree with the code."""

import re
from pathlib import Path

from agentmemory_server.adapters import docs
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
AGENTS = (ROOT / "AGENTS.md").read_text()


def test_generated_blocks_are_fresh():
    assert docs.main(["--check"]) == 0, "run: python src/docs.py"


def test_every_route_is_in_the_readme_table():
    table = README.split("<!-- BEGIN routes -->")[1].split("<!-- END routes -->")[0]
    for methods, path, _desc in docs.route_rows():
        assert f"| {methods} | `{path}` |" in table, f"{methods} {path} missing from README"


def test_every_setting_is_documented():
    for s in SETTINGS:
        assert f"`{s.env[0]}`" in README, s.env[0]


def test_every_mcp_tool_is_in_readme_and_agents():
    for t in registry.REGISTRY.mcp_tools("all"):
        assert f"| `{t.name}` |" in README and f"- `{t.name}`" in AGENTS, t.name
        assert t.description and t.schema["type"] == "object"


def test_every_scope_in_the_code_is_in_the_scope_table():
    table = AGENTS.split("## Data scopes")[1].split("## Consistency rules")[0]
    used = set()
    for path in (ROOT / "src").glob("*.py"):
        for scope in re.findall(r"[\"'](mem:[a-z\-]+(?::[a-z\-]+)*:?)", path.read_text()):
            used.add(scope.rstrip(":") + (":{" if scope.endswith(":") else ""))
    for scope in sorted(used):
        base = scope.split("{")[0]
        assert f"`{base}" in table, f"scope {scope!r} is used in src/ but not in AGENTS.md"


def test_readme_test_command_is_what_ci_runs():
    command = re.search(r"Run the tests.*?```bash\n(.+?)\n```", README, re.DOTALL).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci, f"{command!r} is not what .ci/run runs"


def test_no_module_shadows_the_standard_library():
    # src/ is first on sys.path, so src/profile.py once hid the stdlib module that cProfile needs.
    import sys

    ours = {p.stem for p in (ROOT / "src").glob("*.py")}
    assert ours & set(sys.stdlib_module_names) == set()
