"""jsonb values are read by orjson where it reads every number as the exact parser does
(which keeps integers past 64 bits and numbers past a double's range encodable), and by the
exact parser otherwise: the two paths must never give different values."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.source import _json_float, _json_int, load_jsonb

# Numbers as Postgres prints them (plain digits of any length) and as clients write them.
NUMBER = st.from_regex(
    r"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?\Z", fullmatch=True
)
SCALAR = st.one_of(
    NUMBER,
    st.sampled_from(["null", "true", "false"]),
    st.text(max_size=8).map(json.dumps),
)
JSON_TEXT = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=4), inner, max_size=4).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs.items()) + "}"
        ),
    ),
    max_leaves=12,
)


def _typed(value: object) -> object:
    """The value with every leaf paired with its type: 1 and 1.0 must not pass as equal."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


@given(JSON_TEXT)
@settings(max_examples=500)
def test_the_fast_path_reads_what_the_exact_parser_reads(text: str) -> None:
    exact = json.loads(text, parse_int=_json_int, parse_float=_json_float)
    for data in (text, text.encode()):
        assert _typed(load_jsonb(data)) == _typed(exact)


def test_numbers_past_64_bits_and_past_a_double_take_the_exact_path() -> None:
    assert load_jsonb("18446744073709551615") == 1.8446744073709552e19
    assert load_jsonb(b"[1e400]") == ["1e400"]
    assert load_jsonb('"\\ud800"') == "\ud800"  # a lone surrogate escape: orjson refuses it
