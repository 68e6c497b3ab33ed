"""The documentation contract: README.md, AGENTS.md and docs/*.md agree with the code and keep
their own rules (no bare `python` commands, links that resolve, measured figures that name the
bench, the date and the commit they came from)."""

import ast
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from agentmemory_server import errors
from agentmemory_server.adapters import cli, docs
from agentmemory_server.kernel import events, registry, scopes
from agentmemory_server.kernel.settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "agentmemory_server"
README = (ROOT / "README.md").read_text()
DOC_FILES = docs.documents()
GENERATED = re.compile(r"<!-- BEGIN (\w+) -->\n.*?<!-- END \1 -->", re.DOTALL)


def block(name: str) -> str:
    """The text of the one generated block called ``name``, wherever it lives."""
    found = [
        m.group(0) for path in DOC_FILES for m in GENERATED.finditer(path.read_text()) if m.group(1) == name
    ]
    assert len(found) == 1, f"block {name!r} appears {len(found)} times in the docs"
    return found[0]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- generated tables -----------------------------------------------------------------------------


def test_generated_blocks_are_fresh():
    assert docs.main(["--check"]) == 0, "run: .venv/bin/python -m agentmemory_server.adapters.docs"


def test_every_generator_has_exactly_one_block_and_every_block_a_generator():
    used = {m.group(1) for path in DOC_FILES for m in GENERATED.finditer(path.read_text())}
    assert used == set(docs.GENERATORS)
    for name in docs.GENERATORS:
        assert block(name).count("\n|") >= 3, f"block {name!r} holds no table"


def test_the_check_notices_a_stale_block():
    stale = "<!-- BEGIN events -->\n| old |\n<!-- END events -->\n"
    assert docs.render(stale) != stale and "`observation`" in docs.render(stale)


def test_every_route_is_in_the_route_table():
    table = block("routes")
    rows = docs.route_rows()
    assert len(rows) > 50
    for methods, path, _desc in rows:
        assert f"| {methods} | `{path}` |" in table, f"{methods} {path} missing from docs/api.md"


def test_every_mcp_tool_is_in_the_tool_table_and_nothing_else():
    table = block("tools")
    listed = re.findall(r"^\| `([\w.-]+)` \|", table, re.M)
    assert listed == [t.name for t in registry.REGISTRY.mcp_tools("all")]
    for t in registry.REGISTRY.mcp_tools("all"):
        assert t.description and t.schema["type"] == "object", t.name


def test_every_setting_is_declared_once():
    names = [s.name for s in SETTINGS]
    variables = [var for s in SETTINGS for var in s.env]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    assert sorted({v for v in variables if variables.count(v) > 1}) == []


def test_every_setting_is_in_the_settings_table():
    table = block("config")
    for s in SETTINGS:
        assert re.search(rf"^\| [^|]*`{re.escape(s.env[0])}`", table, re.M), s.env[0]


def test_every_error_code_is_in_the_error_table():
    table = block("errors")
    assert len(errors.CATALOGUE) > 20
    for e in errors.CATALOGUE.values():
        assert f"| `{e.code}` | {e.status} |" in table, e.code


def test_every_cli_command_is_in_the_cli_table():
    table = block("cli")
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert len(commands) >= 7
    for name in commands:
        assert f"| `agentmemory {name}` |" in table, name


def test_every_event_type_is_in_the_event_table():
    table = block("events")
    for name in events.EVENT_TYPES:
        assert f"| `{name}` |" in table, name


def test_every_scope_is_in_the_scope_table():
    table = block("scopes")
    for doc in scopes.SCOPES:
        assert f"| `{doc.name}` |" in table, doc.name
    # Every scope constant of kernel/scopes.py is documented in SCOPES (as itself or as the
    # prefix of a pattern such as mem:obs:{sessionId}).
    constants = {name: value for name, value in vars(scopes).items()
                 if name.isupper() and isinstance(value, str) and value.startswith("mem:")}
    assert len(constants) >= 15
    names = [doc.name for doc in scopes.SCOPES]
    for name, value in constants.items():
        assert any(n == value or n.startswith(value) for n in names), f"scopes.{name} = {value!r} is not in SCOPES"


# -- scope names are spelled in one place ---------------------------------------------------------

SCOPE_HOMES = {"kernel/scopes.py", "storage/sqlite/migrations.py"}  # a released migration never changes


def scope_literals(path: Path) -> list[tuple[int, str]]:
    """String literals (f-string parts included) of a Python file that start like a scope name."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("mem:")]


def test_scope_names_are_spelled_only_in_kernel_scopes():
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 50
    outside = {str(p.relative_to(PACKAGE)): hits for p in files
               if str(p.relative_to(PACKAGE)) not in SCOPE_HOMES and (hits := scope_literals(p))}
    assert outside == {}, f"use the constants of kernel/scopes.py instead: {outside}"
    assert len(scope_literals(PACKAGE / "kernel" / "scopes.py")) >= 15


def test_the_scope_finder_sees_literals_and_fstrings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""About mem:memories."""\n# "mem:x" in a comment\na = "mem:lessons"\nb = f"mem:obs:{a}"\n')
    assert scope_literals(sample) == [(3, "mem:lessons"), (4, "mem:obs:")]


# -- commands in the docs -------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
BARE_PYTHON = re.compile(r"(?:^|&&|\|\||;|\$\(|\|)\s*(?:\$ )?(python \S|python3 src/)")


def bare_python_commands(text: str) -> list[str]:
    """Shell commands in fenced blocks or inline code that run a bare `python` (only the venv's
    interpreter has the dependencies) or `python3 src/...`."""
    found = []
    for language, body in FENCE.findall(text):
        if language in SHELL_LANGUAGES:
            found += [line for line in body.splitlines() if BARE_PYTHON.search(line)]
    prose = FENCE.sub("", text)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if BARE_PYTHON.search(span)]
    return found


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_no_command_runs_a_bare_python(path):
    assert bare_python_commands(path.read_text()) == []


def test_the_bare_python_finder_finds_them():
    text = ("Run `python src/cli.py stats` or\n```bash\ncd x && python sync.py backup\n"
            ".venv/bin/python src/app.py\npython3 src/app.py\n```\n`python3 -m venv .venv` is fine.\n")
    assert bare_python_commands(text) == ["cd x && python sync.py backup", "python3 src/app.py",
                                          "python src/cli.py stats"]


def test_readme_test_command_is_what_ci_runs():
    command = re.search(r"Run the tests.*?```bash\n(.+?)\n```", README, re.DOTALL).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command == "./tests/run.sh" and command in ci, f"{command!r} is not what .ci/run runs"


def test_readme_quick_start_is_the_documented_install():
    start = README.split("## Quick start")[1].split("\n## ")[0]
    assert ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python src/app.py"
            in start)
    assert "~/.agentmemory/secret" in start and "Authorization: Bearer $TOKEN" in start


def test_readme_sections_come_in_order():
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings[:4] == ["Quick start", "Use it with Claude Code", "Other agents", "Concepts"]
    assert headings[-1] == "Reference"


# -- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s) and other schemes: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            if anchor not in anchors:
                broken.append(target)
    return broken


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_links_resolve(path):
    assert broken_links(path) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(README) if t.startswith("docs/")}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert len(pages) >= 8 and pages <= linked, sorted(str(p) for p in pages - linked)


def test_the_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#some-code-here) [gone](missing.md) [bad](a.md#nope) [web](https://x.org/y)\n")
    assert broken_links(page) == ["missing.md", "a.md#nope"]


# -- measured figures -----------------------------------------------------------------------------

FIGURE = re.compile(r"\d(?:[\d,.]*\d)?\s?(?:ms|µs|obs/s|ops/s|jobs/s|records/s|MB|GB)\b")
METRIC = re.compile(r"\b(?:R|Recall|NDCG|MRR)@\d+")  # a retrieval metric, with scores such as 0.777
SCORE = re.compile(r"\b0\.\d{3}\b")
STAMP = re.compile(r"\(`(bench/[\w/]+\.py)`[^()]*?,\s+(\d{4}-\d{2}-\d{2}),\s+commit\s+([0-9a-f]{7,40})\b")


def sections_with_unstamped_figures(text: str) -> list[str]:
    """Headings of the sections (outside generated tables) that state a measured figure but name
    no bench run."""
    text = GENERATED.sub("", text)
    return [section.splitlines()[0] for section in re.split(r"\n(?=#+ )", text)
            if (FIGURE.search(section) or (METRIC.search(section) and SCORE.search(section)))
            and not STAMP.search(section)]


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_measured_figures_name_their_bench_run(path):
    assert sections_with_unstamped_figures(path.read_text()) == []


def test_the_figure_check_finds_an_unstamped_figure():
    text = ("# A\n\nTimeouts of 30 s are settings; confidence goes 0.5 -> 0.595.\n\n## B\n\nSearch takes 14 ms.\n\n"
            "## C\n\n| R@10 |\n|---|\n| 0.777 |\n\n"
            "## D\n\nIngest 646 obs/s (`bench/llm_compress.py`, 2026-11-22, commit 4d14a3a).\n")
    assert sections_with_unstamped_figures(text) == ["## B", "## C"]


def stamps() -> list[tuple[str, str, str, str]]:
    return [(rel(path), *m.groups()) for path in DOC_FILES for m in STAMP.finditer(path.read_text())]


def test_every_bench_stamp_names_a_real_script_date_and_commit():
    found = stamps()
    assert len(found) >= 8
    for where, script, day, commit in found:
        assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        date.fromisoformat(day)
        shown = subprocess.run(["git", "-C", str(ROOT), "show", "-s", "--format=%as %cs", f"{commit}^{{commit}}"],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, f"{where}: commit {commit} is not in this repository"
        assert day in shown.stdout.split(), f"{where}: commit {commit} is from {shown.stdout.strip()}, not {day}"


def test_no_module_shadows_the_standard_library():
    # src/ is first on sys.path when running src/app.py, so src/profile.py once hid the stdlib
    # module that cProfile needs.
    ours = {p.stem for p in (ROOT / "src").glob("*.py")}
    assert ours and ours & set(sys.stdlib_module_names) == set()
