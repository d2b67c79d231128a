"""The read model is spelled in one place: the check documented in docs/internals.md, run as
written there, finds no index alias, Elasticsearch field name or Redis key fragment in
``indexer/`` or ``readapi/``; and the names it defines fit together."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cache.readmodel.documents import ALIAS_OF_KIND, ALIAS_SPECS, INDEXED_KINDS
from cache.readmodel.indices import Field, IndexNames, index_mappings
from cache.types import ObjectKind

ROOT = Path(__file__).resolve().parents[2]


def _documented_check() -> str:
    text = (ROOT / "docs" / "internals.md").read_text(encoding="utf-8")
    commands = re.findall(r"^grep -rnE .*$", text, flags=re.MULTILINE)
    assert len(commands) == 1, "docs/internals.md must hold exactly one read-model check"
    return commands[0]


def test_nothing_outside_the_read_model_spells_its_names() -> None:
    result = subprocess.run(
        ["bash", "-c", _documented_check()], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.stderr == ""
    assert result.stdout == "", f"names spelled outside cache/readmodel:\n{result.stdout}"


def test_the_documented_check_finds_a_spelled_name(tmp_path: Path) -> None:
    # The same command over a copy holding one offending line must print it.
    (tmp_path / "indexer").mkdir()
    (tmp_path / "readapi").mkdir()
    (tmp_path / "readapi" / "bad.py").write_text('query = {"term": {"segment_ids": "s1"}}\n')
    result = subprocess.run(
        ["bash", "-c", _documented_check()], cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )
    assert "readapi/bad.py:1:" in result.stdout


def test_every_alias_names_an_indexed_keyword_field() -> None:
    for kind, spec in ALIAS_OF_KIND.items():
        assert ALIAS_SPECS[spec.alias] is spec
        assert index_mappings(kind)["properties"][spec.search_field] == {"type": "keyword"}


def test_every_field_constant_is_mapped_for_some_kind() -> None:
    mapped = set().union(*(index_mappings(kind)["properties"] for kind in INDEXED_KINDS))
    names = {value for name, value in vars(Field).items() if name.isupper()}
    assert names <= mapped


def test_index_names() -> None:
    names = IndexNames("loyalty_")
    assert names.alias(ObjectKind.VOUCHER) == "loyalty_vouchers"
    assert names.generation(ObjectKind.CUSTOMER, 7) == "loyalty_customers_v7"
    assert names.generations_pattern(ObjectKind.SEGMENT) == "loyalty_segments_v*"
    assert len(set(names.aliases())) == len(INDEXED_KINDS) == len(ObjectKind)
