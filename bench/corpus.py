"""A synthetic coding-agent corpus for the scale benchmark: tool calls, edits, errors and prompts.

Words follow a Zipf-like distribution, and a small set of common words ("fix", "test", "error",
"auth", ...) appears in most records, as it does in a real agent's memory: that is what makes
a lexical engine without top-k pruning cost time in proportion to the corpus. Everything is
deterministic for a given seed, so runs at different sizes share the same vocabulary.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from typing import Any

COMMON = (
    "fix test error file function update add run check code module auth config build failing the in for with".split()
)
STEMS = (
    "token session cache parser schema query index retry timeout worker queue deploy release "
    "migration rollback lint docker server client request response handler router middleware "
    "user account billing invoice payment order cart search vector embed model prompt context "
    "memory lesson slot agent hook event stream socket upload image thumbnail report export "
    "import backup restore metric trace span log alert quota limit budget plan task job "
    "scheduler cron webhook oauth jwt refresh password email notify template render layout "
    "widget theme style asset bundle compile typecheck coverage fixture mock snapshot"
).split()
SUFFIXES = (
    "service manager store client helper util factory builder loader writer reader validator "
    "serializer adapter provider registry resolver controller view model spec test config"
).split()
VERBS = "parse load save render validate refresh retry flush merge split encode decode sync".split()
TOOLS = ("Bash", "Edit", "Read", "Write", "Grep")
TYPES = {"Bash": "command_run", "Edit": "file_edit", "Read": "file_read", "Write": "file_write", "Grep": "search"}
MEMORY_TYPES = ("pattern", "preference", "architecture", "bug", "workflow", "fact")
PROJECTS = tuple(f"proj-{name}" for name in ("api", "web", "infra", "mobile", "data"))


class Vocabulary:
    """Identifiers, paths and plain words with Zipf-like weights (rank r has weight 1/r^s)."""

    def __init__(self, seed: int = 7, exponent: float = 1.05):
        rng = random.Random(seed)
        idents = [f"{stem}_{suffix}" for stem, suffix in itertools.product(STEMS, SUFFIXES)]
        idents += [f"{verb}_{stem}" for verb, stem in itertools.product(VERBS, STEMS)]
        rng.shuffle(idents)
        self.words = STEMS + idents
        cumulative, total = [], 0.0
        for rank in range(1, len(self.words) + 1):
            total += 1.0 / rank**exponent
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def word(self, rng: random.Random) -> str:
        return self.words[bisect.bisect_left(self._cumulative, rng.random() * self._total)]

    def words_for(self, rng: random.Random, count: int) -> list[str]:
        return [self.word(rng) for _ in range(count)]

    def path(self, rng: random.Random) -> str:
        parts = [rng.choice(("src", "lib", "app", "tests")), self.word(rng).split("_")[0], self.word(rng)]
        return "/".join(parts) + rng.choice((".py", ".ts", ".go", ".rs"))


def _sentence(rng: random.Random, vocab: Vocabulary, length: int) -> str:
    words = [rng.choice(COMMON) if rng.random() < 0.45 else vocab.word(rng) for _ in range(length)]
    return " ".join(words)


def iso(second: int) -> str:
    """A timestamp ``second`` seconds after 2026-01-01 (one month is 30 days here)."""
    day, rest = divmod(second, 86_400)
    month, day = divmod(day, 30)
    return f"2026-{month % 12 + 1:02d}-{day + 1:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}.000Z"


def observation(i: int, session: str, project: str, second: int, rng: random.Random, vocab: Vocabulary) -> dict:
    tool = rng.choice(TOOLS)
    path = vocab.path(rng)
    ident = vocab.word(rng)
    titles = {
        "Bash": f"Ran pytest {path} for {ident}",
        "Edit": f"Edited {path}: {rng.choice(VERBS)} {ident}",
        "Read": f"Read {path}",
        "Write": f"Wrote {path}",
        "Grep": f"Searched for {ident}",
    }
    narrative = _sentence(rng, vocab, rng.randint(20, 45))
    if tool == "Bash" and rng.random() < 0.3:
        narrative += f" AssertionError in {ident}: expected {rng.randint(1, 99)} got {rng.randint(100, 999)}"
    return {
        "id": f"obs_scale_{i:08d}",
        "sessionId": session,
        "project": project,
        "timestamp": iso(second),
        "type": TYPES[tool],
        "title": titles[tool],
        "narrative": narrative,
        "facts": [_sentence(rng, vocab, 8) for _ in range(rng.randint(1, 3))],
        "concepts": sorted(set(vocab.words_for(rng, rng.randint(2, 4)))),
        "files": [path] + ([vocab.path(rng)] if rng.random() < 0.3 else []),
        "importance": rng.randint(2, 8),
    }


def memory_content(rng: random.Random, vocab: Vocabulary) -> str:
    return f"{rng.choice(VERBS)} {vocab.word(rng)} before {vocab.word(rng)}: " + _sentence(
        rng, vocab, rng.randint(15, 40)
    )


def memory(i: int, second: int, rng: random.Random, vocab: Vocabulary) -> dict:
    content = memory_content(rng, vocab)
    stamp = iso(second)
    return {
        "id": f"mem_scale_{i:08d}",
        "createdAt": stamp,
        "updatedAt": stamp,
        "type": rng.choice(MEMORY_TYPES),
        "title": content[:80],
        "content": content,
        "concepts": sorted(set(vocab.words_for(rng, 3))),
        "files": [vocab.path(rng)],
        "sessionIds": [],
        "strength": 7,
        "version": 1,
        "isLatest": True,
        "project": rng.choice(PROJECTS),
    }


def records(observations: int, memories: int, *, seed: int = 11, per_session: int = 200) -> Iterator[dict[str, Any]]:
    """Partial export documents, one record each: sessions with their observations, then memories."""
    rng = random.Random(seed)
    vocab = Vocabulary()
    second = 0
    for start in range(0, observations, per_session):
        session = f"ses_scale_{start // per_session:06d}"
        project = PROJECTS[(start // per_session) % len(PROJECTS)]
        count = min(per_session, observations - start)
        yield {
            "sessions": [
                {
                    "id": session,
                    "project": project,
                    "cwd": f"/work/{project}",
                    "startedAt": iso(second),
                    "endedAt": iso(second + count * 20),
                    "status": "completed",
                    "observationCount": count,
                }
            ]
        }
        for i in range(start, start + count):
            second += rng.randint(5, 40)
            yield {"observations": {session: [observation(i, session, project, second, rng, vocab)]}}
    for i in range(memories):
        yield {"memories": [memory(i, i * 60, rng, vocab)]}


def query(kind: str, rng: random.Random, vocab: Vocabulary) -> str:
    """A search query: ``common`` uses only words in most records, ``mixed`` some of each,
    ``rare`` identifiers from the long tail, ``file`` a path."""
    if kind == "common":
        return " ".join(rng.sample(COMMON[:15], 6))
    if kind == "mixed":
        return " ".join(rng.sample(COMMON[:15], 3) + vocab.words_for(rng, 2))
    if kind == "rare":
        return " ".join(rng.choice(vocab.words[len(vocab.words) // 2 :]) for _ in range(2))
    return vocab.path(rng)
