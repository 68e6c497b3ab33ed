"""Property test: a secret of any family, embedded anywhere in random text, never survives."""

import string

from hypothesis import HealthCheck, given, settings, strategies as st

from agentmemory_server.kernel.privacy import strip_private_data, strip_text

ALNUM = string.ascii_letters + string.digits
TOKEN = ALNUM + "_-"


def secret_strategies():
    def s(alphabet, lo, hi=None):
        return st.text(alphabet=alphabet, min_size=lo, max_size=hi or lo + 20)

    return [
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["api_key", "API-KEY", "apikey", "secret", "Token",
                                                           "PASSWORD", "credential", "auth"]), s(ALNUM, 20)),
        st.builds(lambda v: f"Bearer {v}", s(ALNUM + "._-", 20)),
        st.builds(lambda v: f"sk-proj-{v}", s(TOKEN, 20)),
        st.builds(lambda v: f"sk-ant-{v}", s(TOKEN, 20)),
        st.builds(lambda p, a, v: f"{p}-{a}{v}", st.sampled_from(["sk", "pk", "rk", "ak"]), s(ALNUM, 1, 1), s(TOKEN, 19)),
        st.builds(lambda p, v: f"{p}_{v}", st.sampled_from(["ghp", "ghu", "ghs", "gho", "ghr"]), s(ALNUM, 36)),
        st.builds(lambda v: f"github_pat_{v}", s(ALNUM + "_", 22)),
        st.builds(lambda v: f"xoxb-{v}", s(ALNUM + "-", 10)),
        st.builds(lambda v: f"AKIA{v}", s(string.ascii_uppercase + string.digits, 16, 16)),
        st.builds(lambda v: f"AIza{v}", s(TOKEN, 35, 35)),
        st.builds(lambda a, b, c: f"eyJ{a}.{b}.{c}", s(TOKEN, 10), s(TOKEN, 10), s(TOKEN, 10)),
        st.builds(lambda v: f"npm_{v}", s(ALNUM, 36, 36)),
        st.builds(lambda v: f"glpat-{v}", s(TOKEN, 20)),
        st.builds(lambda v: f"dop_v1_{v}", s(ALNUM, 64, 64)),
        st.builds(lambda v: f"hf_{v}", s(ALNUM, 30)),
    ]


# Surrounding text may be anything, but it is separated from the secret by a space so the
# secret is a token of its own (as in real logs).
filler = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(before=filler, secret=st.one_of(secret_strategies()), after=filler)
def test_embedded_secrets_never_survive(before, secret, after):
    out = strip_text(f"{before} {secret} {after}")
    # The secret's distinctive tail is gone (unless the random filler itself contains it).
    assert secret not in out
    assert secret[-16:] not in out or secret[-16:] in before + after


@settings(max_examples=200, deadline=None)
@given(secret=st.one_of(secret_strategies()), key=st.text(min_size=1, max_size=10), depth=st.integers(0, 4))
def test_secrets_deep_in_structures_never_survive(secret, key, depth):
    value = {"text": f"log: {secret} end"}
    for _ in range(depth):
        value = {key: [value, 1, None]}
    out = strip_private_data(value)
    assert secret[-16:] not in repr(out)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=string.ascii_lowercase + " .,\n", max_size=200))
def test_plain_prose_is_untouched(text):
    assert strip_text(text) == text
