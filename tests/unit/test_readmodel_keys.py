"""Key layout: exact key text, hash tags per project, and no two things sharing a key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.readmodel.keys import (
    DEFAULT_PREFIX,
    AliasKind,
    KeyLayout,
    hash_tag_of,
    project_hash_tag,
)
from cache.types import ObjectKind

layout = KeyLayout("loyalty:")


def test_key_text() -> None:
    assert layout.object_key("p_1", ObjectKind.VOUCHER, "V1") == "loyalty:{p_1}:v:V1"
    assert layout.object_key("p_1", ObjectKind.CUSTOMER, "C1") == "loyalty:{p_1}:c:C1"
    assert layout.object_key("p_1", ObjectKind.CAMPAIGN, "K1") == "loyalty:{p_1}:m:K1"
    assert layout.object_key("p_1", ObjectKind.SEGMENT, "S1") == "loyalty:{p_1}:s:S1"
    code, source_id = AliasKind.VOUCHER_CODE, AliasKind.CUSTOMER_SOURCE_ID
    assert layout.alias_key("p_1", code, "SUMMER10") == "loyalty:{p_1}:vc:SUMMER10"
    assert layout.alias_key("p_1", source_id, "crm-42") == "loyalty:{p_1}:cs:crm-42"
    assert layout.app_key("app_1") == "loyalty:ak:app_1"
    assert layout.rate_limit_key("app_1") == "loyalty:rl:app_1"
    assert layout.watermark_key == "loyalty:wm"
    assert layout.channel == "loyalty:inv:{loyalty:wm}"
    assert hash_tag_of(layout.channel) == layout.watermark_key


@given(
    st.text(min_size=0, max_size=12, alphabet="ab}{%:_1"),
    st.text(min_size=1, max_size=12),
)
def test_project_key_heads_build_the_same_keys(project_id: str, value: str) -> None:
    heads = layout.project_keys(project_id)
    for head, kind in (
        (heads.voucher, ObjectKind.VOUCHER),
        (heads.customer, ObjectKind.CUSTOMER),
        (heads.campaign, ObjectKind.CAMPAIGN),
        (heads.segment, ObjectKind.SEGMENT),
    ):
        assert head + value == layout.object_key(project_id, kind, value)
    assert heads.voucher_code + value == layout.alias_key(
        project_id, AliasKind.VOUCHER_CODE, value
    )
    assert heads.customer_source_id + value == layout.alias_key(
        project_id, AliasKind.CUSTOMER_SOURCE_ID, value
    )


@given(
    st.text(min_size=0, max_size=12, alphabet="ab}{%:_17D25"),
    st.sampled_from(list(ObjectKind)),
    st.text(min_size=0, max_size=12, alphabet="ab}{%:_*"),
)
def test_an_object_key_gives_back_its_project_kind_and_id(
    project_id: str, kind: ObjectKind, object_id: str
) -> None:
    key = layout.object_key(project_id, kind, object_id)
    assert layout.object_of_key(key) == (project_id, kind, object_id)
    assert layout.is_object_key(key)


def test_other_keys_are_not_objects() -> None:
    for key in (
        layout.alias_key("p", AliasKind.VOUCHER_CODE, "X"),
        layout.membership_key("p", "c1"),
        layout.segment_counts_key("p"),
        layout.app_key("app_1"),
        layout.watermark_key,
        "elsewhere:{p}:v:1",
    ):
        assert layout.object_of_key(key) is None, key


def test_the_keys_pattern_of_a_project_escapes_glob_characters() -> None:
    assert layout.project_keys_pattern() == "loyalty:{*"
    assert layout.project_keys_pattern("p*[1]") == "loyalty:{p\\*\\[1\\]}:*"


def test_kinds_may_be_plain_strings() -> None:
    assert layout.object_key("p", "voucher", "x") == layout.object_key("p", ObjectKind.VOUCHER, "x")
    assert layout.alias_key("p", "voucher_code", "x") == layout.alias_key(
        "p", AliasKind.VOUCHER_CODE, "x"
    )


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError):
        layout.object_key("p", "redemption", "x")
    with pytest.raises(ValueError):
        layout.alias_key("p", "voucher", "x")


def test_prefix_is_the_callers_or_the_default() -> None:
    assert KeyLayout("other:").prefix == "other:"
    assert KeyLayout().prefix == DEFAULT_PREFIX


@pytest.mark.parametrize("prefix", ["a{b:", "a}:", "{x}:"])
def test_prefix_with_braces_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        KeyLayout(prefix)


@pytest.mark.parametrize("project_id", ["", "}", "}x", "a}b", "%", "50%", "{", "a{b}"])
def test_awkward_project_ids_still_give_one_non_empty_tag(project_id: str) -> None:
    tag = project_hash_tag(project_id)
    assert tag
    assert "}" not in tag
    keys = [
        layout.object_key(project_id, ObjectKind.VOUCHER, "v"),
        layout.object_key(project_id, ObjectKind.SEGMENT, "}{"),
        layout.alias_key(project_id, AliasKind.VOUCHER_CODE, "C}"),
    ]
    assert {hash_tag_of(key) for key in keys} == {tag}


def test_global_keys_have_no_hash_tag() -> None:
    for key in (layout.app_key("app_1"), layout.rate_limit_key("x"), layout.watermark_key):
        assert hash_tag_of(key) is None


@pytest.mark.parametrize(
    ("key", "tag"),
    [("a{b}c", "b"), ("a{}b{c}", None), ("a{b", None), ("{b}}", "b"), ("a{{b}", "{b")],
)
def test_hash_tag_of_follows_redis_cluster(key: str, tag: str | None) -> None:
    assert hash_tag_of(key) == tag


kinds = st.sampled_from([*ObjectKind, *AliasKind])
text = st.text(max_size=12)


@given(st.tuples(text, kinds, text), st.tuples(text, kinds, text))
def test_distinct_identities_never_share_a_key(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    def key(project_id: str, kind: str, ident: str) -> str:
        if kind in set(AliasKind):
            return layout.alias_key(project_id, kind, ident)
        return layout.object_key(project_id, kind, ident)

    if a != b:
        assert key(*a) != key(*b)
    assert key(*a).startswith(layout.prefix)
    assert hash_tag_of(key(*a)) == project_hash_tag(a[0])


@given(text, text)
def test_projects_never_share_a_tag(a: str, b: str) -> None:
    if a != b:
        assert project_hash_tag(a) != project_hash_tag(b)


# -- segment membership ----------------------------------------------------------------------


def test_membership_key_text() -> None:
    assert layout.membership_key("p_1", "C1") == "loyalty:{p_1}:sm:C1"
    assert layout.segment_counts_key("p_1") == "loyalty:{p_1}:sc"
    assert layout.segment_events_key("p_1") == "loyalty:{p_1}:ev"
    assert layout.segment_jobs_key == "loyalty:sj"
    assert hash_tag_of(layout.segment_jobs_key) is None


@given(st.text(max_size=12, alphabet="ab}{%:_1*?[]\\"), st.text(max_size=12))
def test_one_projects_membership_keys_share_its_tag(project_id: str, customer_id: str) -> None:
    keys = [
        layout.membership_key(project_id, customer_id),
        layout.segment_counts_key(project_id),
        layout.segment_events_key(project_id),
        layout.object_key(project_id, ObjectKind.CUSTOMER, customer_id),
    ]
    assert {hash_tag_of(key) for key in keys} == {project_hash_tag(project_id)}


@given(text, kinds, text)
def test_envelope_keys_are_told_from_membership_keys(
    project_id: str, kind: str, ident: str
) -> None:
    if kind in set(AliasKind):
        envelope = layout.alias_key(project_id, kind, ident)
    else:
        envelope = layout.object_key(project_id, kind, ident)
    membership = [
        layout.membership_key(project_id, ident),
        layout.segment_counts_key(project_id),
    ]
    others = [layout.segment_events_key(project_id), layout.segment_jobs_key]
    assert layout.is_envelope_key(envelope)
    assert not layout.is_membership_state_key(envelope)
    for key in membership:
        assert key != envelope
        assert layout.is_membership_state_key(key)
        assert not layout.is_envelope_key(key)
        assert not layout.is_object_key(key)
    for key in others:
        assert key != envelope
        assert not layout.is_membership_state_key(key)
        assert not layout.is_envelope_key(key)
        assert not layout.is_object_key(key)


def test_global_keys_are_envelopes_only_for_api_keys() -> None:
    assert layout.is_envelope_key(layout.app_key("app_1"))
    for key in (layout.watermark_key, layout.rate_limit_key("app_1"), layout.channel):
        assert not layout.is_envelope_key(key)
        assert not layout.is_membership_state_key(key)
    # Another prefix's keys are not this layout's.
    other = KeyLayout("other:")
    assert not layout.is_envelope_key(other.object_key("p", ObjectKind.VOUCHER, "v"))
    assert not layout.is_membership_state_key(other.membership_key("p", "c"))


def test_membership_state_patterns_escape_glob_characters() -> None:
    assert layout.membership_state_pattern() == "loyalty:{*}:s[mc]*"
    assert layout.membership_state_pattern("p_1") == "loyalty:{p_1}:s[mc]*"
    assert layout.membership_state_pattern("p*[?]\\") == "loyalty:{p\\*\\[\\?\\]\\\\}:s[mc]*"
    assert KeyLayout("a*b:").membership_state_pattern() == "a\\*b:{*}:s[mc]*"
