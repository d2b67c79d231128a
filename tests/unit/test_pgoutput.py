"""Unit tests of ``indexer/pgoutput.py``: real captured messages, malformed input, round trips.

The captured messages come from PostgreSQL 15 (``capture_pgoutput.py`` wrote them into
``data/pgoutput_capture.json``); the scenarios there write only deterministic values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.types import Lsn
from indexer.errors import PgOutputError
from indexer.pgoutput import (
    PG_EPOCH,
    UNCHANGED,
    Begin,
    Cell,
    ChangeDecoder,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    RowChange,
    Transaction,
    Truncate,
    TypeInfo,
    Update,
    decode_message,
)

CAPTURE = json.loads(
    (Path(__file__).parent / "data" / "pgoutput_capture.json").read_text(encoding="utf-8")
)
OIDS: dict[str, int] = CAPTURE["relations"]
BIG_BLOB = "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 401))
TEXT, INT4, INT8, INT2, VARCHAR, JSONB, JSON = 25, 23, 20, 21, 1043, 3802, 114
TIMESTAMPTZ, TIMESTAMP, DATE, NUMERIC, FLOAT8, BOOL = 1184, 1114, 1082, 1700, 701, 16
TEXT_ARRAY = 1009

ITEM_1 = {
    "id": 1,
    "name": "Zürich ☕",
    "note": None,
    "payload": {"tier": "gold", "nested": {"n": [1, 2.5, None]}, "emoji": "🎉"},
    "raw": {"b": 1, "a": [True]},
    "happened_at": datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    "local_at": datetime(2024, 1, 2, 3, 4, 5),
    "day": date(2024, 2, 29),
    "amount": Decimal("12.50"),
    "qty": 9007199254740993,
    "small": -7,
    "ratio": 0.25,
    "flag": True,
    "tags": '{a,"b c"}',
}
ITEM_2 = {
    "id": 2,
    "name": "second",
    "note": None,
    "payload": None,
    "raw": None,
    "happened_at": datetime(2024, 1, 1, 21, 34, 5, tzinfo=UTC),
    "local_at": None,
    "day": None,
    "amount": 100,
    "qty": 0,
    "small": None,
    "ratio": None,
    "flag": False,
    "tags": None,
}


def rows(scenario: str) -> list[tuple[Lsn, int, bytes]]:
    return [(Lsn.parse(lsn), xid, bytes.fromhex(data))
            for lsn, xid, data in CAPTURE["scenarios"][scenario]]


def messages(scenario: str) -> list[Message]:
    return [decode_message(data) for _, _, data in rows(scenario)]


def transactions(scenario: str) -> list[Transaction]:
    return ChangeDecoder().feed_all(data for _, _, data in rows(scenario))


def only_change(scenario: str) -> RowChange:
    (transaction,) = transactions(scenario)
    (change,) = transaction.changes
    return change


# ---------------------------------------------------------------------------- captured


@pytest.mark.parametrize("scenario", sorted(CAPTURE["scenarios"]))
def test_every_transaction_is_framed_by_begin_and_commit(scenario: str) -> None:
    captured = rows(scenario)
    decoded = [decode_message(data) for _, _, data in captured]
    begins = [i for i, m in enumerate(decoded) if isinstance(m, Begin)]
    commits = [i for i, m in enumerate(decoded) if isinstance(m, Commit)]
    assert begins and len(begins) == len(commits)
    for start, end in zip(begins, commits, strict=True):
        begin, commit = decoded[start], decoded[end]
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time == commit.commit_time
        assert begin.commit_time.tzinfo is UTC
        assert begin.xid == captured[start][1]
        assert commit.flags == 0
        # The peek's lsn column of a commit row is the transaction's end.
        assert captured[end][0] == commit.end_lsn
    assert [t.end_lsn for t in transactions(scenario)] == [
        decoded[i].end_lsn for i in commits  # type: ignore[union-attr]
    ]


def test_relation_describes_columns_and_identity() -> None:
    relation = messages("insert")[1]
    assert isinstance(relation, Relation)
    assert (relation.oid, relation.namespace, relation.name) == (OIDS["items"], "public", "items")
    assert relation.replica_identity == "f"
    assert [(c.name, c.type_oid, c.type_modifier) for c in relation.columns] == [
        ("id", INT4, -1), ("name", TEXT, -1), ("note", VARCHAR, 40 + 4), ("payload", JSONB, -1),
        ("raw", JSON, -1), ("happened_at", TIMESTAMPTZ, -1), ("local_at", TIMESTAMP, -1),
        ("day", DATE, -1), ("amount", NUMERIC, (12 << 16 | 2) + 4), ("qty", INT8, -1),
        ("small", INT2, -1), ("ratio", FLOAT8, -1), ("flag", BOOL, -1), ("tags", TEXT_ARRAY, -1),
    ]
    # REPLICA IDENTITY FULL marks every column as part of the key.
    assert all(c.is_key for c in relation.columns)
    plain = messages("update_default")[1]
    assert isinstance(plain, Relation)
    assert plain.replica_identity == "d"
    assert [(c.name, c.is_key) for c in plain.columns] == [("id", True), ("label", False)]


def test_insert_converts_every_cell_type() -> None:
    (transaction,) = transactions("insert")
    assert transaction.xid == rows("insert")[0][1]
    assert transaction.changes == (
        RowChange("insert", "items", ITEM_1, None),
        RowChange("insert", "items", ITEM_2, None),
    )
    raw = messages("insert")[2]
    assert isinstance(raw, Insert) and raw.relation_oid == OIDS["items"]
    assert raw.new[2] is None and raw.new[1] == "Zürich ☕"


def test_update_with_full_identity_carries_the_old_row() -> None:
    change = only_change("update_full")
    assert change == RowChange(
        "update", "items", ITEM_1 | {"name": "renamed", "flag": False}, ITEM_1
    )
    raw = messages("update_full")[2]
    assert isinstance(raw, Update) and raw.old_kind == "O"


def test_update_with_default_identity_has_no_old_row() -> None:
    assert only_change("update_default") == RowChange("update", "plain", {"id": 1, "label": "b"},
                                                      None)


def test_update_of_the_key_carries_the_old_key_only() -> None:
    raw = messages("update_default_key")[2]
    assert isinstance(raw, Update) and raw.old_kind == "K" and raw.old == ("1", None)
    assert only_change("update_default_key") == RowChange(
        "update", "plain", {"id": 10, "label": "b"}, {"id": 1}
    )


def test_delete_carries_the_full_row_or_the_key() -> None:
    (transaction,) = transactions("delete")
    assert transaction.changes == (
        RowChange("delete", "items", None, ITEM_2),
        RowChange("delete", "plain", None, {"id": 10}),
    )
    kinds = [m.old_kind for m in messages("delete") if isinstance(m, Delete)]
    assert kinds == ["O", "K"]


def test_truncate_cascade_yields_one_change_per_table() -> None:
    (truncate,) = [m for m in messages("truncate") if isinstance(m, Truncate)]
    assert truncate.relation_oids == (OIDS["parent"], OIDS["child"])
    assert truncate.cascade and not truncate.restart_identity
    (transaction,) = transactions("truncate")
    assert transaction.changes == (
        RowChange("truncate", "parent", None, None),
        RowChange("truncate", "child", None, None),
    )


def test_unchanged_toast_value_is_never_a_null() -> None:
    raw = messages("toast_default")[2]
    assert isinstance(raw, Update) and raw.old is None and raw.new[2] is UNCHANGED
    change = only_change("toast_default")
    assert change.new == {"id": 1, "title": "t2"}
    assert "body" not in change.new
    assert change.unchanged == frozenset({"body"})
    assert change.old is None


def test_unchanged_toast_value_is_filled_from_the_full_old_row() -> None:
    raw = messages("toast_full")[2]
    assert isinstance(raw, Update) and raw.old_kind == "O" and raw.new[2] is UNCHANGED
    assert len(BIG_BLOB) == 12_800
    body = {"blob": BIG_BLOB}
    change = only_change("toast_full")
    assert change.new == {"id": 1, "title": "t2", "body": body}
    assert change.old == {"id": 1, "title": "t1", "body": body}
    assert change.unchanged == frozenset()


def test_relation_after_alter_replaces_the_columns() -> None:
    decoder = ChangeDecoder()
    found = decoder.feed_all(data for _, _, data in rows("alter_columns"))
    assert [t.changes for t in found] == [
        (RowChange("insert", "evolving", {"id": 1, "a": "a1"}, None),),
        (RowChange("insert", "evolving", {"id": 2, "a": "a2", "b": "b2"}, None),),
        (
            RowChange("insert", "evolving", {"id": 3, "b": "b3"}, None),
            RowChange("update", "evolving", {"id": 2, "b": "bb"}, None),
        ),
    ]
    assert [c.name for c in decoder.relations[OIDS["evolving"]].columns] == ["id", "b"]


def test_relation_after_alter_inside_one_transaction() -> None:
    relations = [m for m in messages("alter_in_transaction") if isinstance(m, Relation)]
    assert [len(r.columns) for r in relations] == [2, 3]
    (transaction,) = transactions("alter_in_transaction")
    assert transaction.changes == (
        RowChange("insert", "reshaped", {"id": 1, "a": "a1"}, None),
        RowChange("insert", "reshaped", {"id": 2, "a": "a2", "c": 7}, None),
    )


def test_custom_type_message_and_enum_value_as_text() -> None:
    assert messages("custom_type")[1] == TypeInfo(CAPTURE["mood_type_oid"], "public", "mood")
    assert only_change("custom_type") == RowChange("insert", "moods", {"id": 1, "m": "happy"},
                                                   None)


def test_logical_message_is_decoded_and_skipped() -> None:
    message = messages("logical_message")[1]
    assert isinstance(message, LogicalMessage)
    assert (message.transactional, message.prefix, message.content) == (True, "loyalty", b"hello")
    assert only_change("logical_message") == RowChange("insert", "moods", {"id": 2, "m": "ok"},
                                                       None)


def test_origin_message() -> None:
    decoded = messages("origin")
    assert decoded[1] == Origin(Lsn.parse("0/AB12CD34"), "pgoutput_capture_origin")
    begin = decoded[0]
    assert isinstance(begin, Begin)
    assert begin.commit_time == datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    assert only_change("origin") == RowChange("insert", "plain",
                                              {"id": 20, "label": "from elsewhere"}, None)


def test_one_decoder_reads_every_scenario_in_sequence() -> None:
    decoder = ChangeDecoder()
    found = []
    for scenario in CAPTURE["scenarios"]:
        found += decoder.feed_all(data for _, _, data in rows(scenario))
    assert len(found) == sum(len(transactions(s)) for s in CAPTURE["scenarios"])
    assert not decoder.in_transaction
    assert [t.commit_lsn for t in found] == sorted(t.commit_lsn for t in found)


# ---------------------------------------------------------------------------- malformed


def _captured_messages() -> list[bytes]:
    return [bytes.fromhex(data) for scenario in CAPTURE["scenarios"].values()
            for _, _, data in scenario]


def test_every_truncated_message_raises() -> None:
    for data in _captured_messages():
        # Long messages: every cut near the ends, a sample in between.
        cuts = range(len(data)) if len(data) < 600 else [
            *range(300), *range(300, len(data) - 300, 97), *range(len(data) - 300, len(data))
        ]
        for cut in cuts:
            with pytest.raises(PgOutputError):
                decode_message(data[:cut])


def test_trailing_bytes_raise() -> None:
    for data in _captured_messages():
        with pytest.raises(PgOutputError, match="unexpected bytes"):
            decode_message(data + b"\x00")


@pytest.mark.parametrize("data", [b"", b"Z", b"Zabc", b"\x00"])
def test_unknown_message_type_raises(data: bytes) -> None:
    with pytest.raises(PgOutputError):
        decode_message(data)


def test_unknown_cell_kind_raises() -> None:
    insert = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"x"
    with pytest.raises(PgOutputError, match="unknown tuple cell kind 'x'"):
        decode_message(insert)


def test_unknown_tuple_marker_raises() -> None:
    update = b"U" + struct.pack("!I", 1) + b"Q" + struct.pack("!H", 0)
    with pytest.raises(PgOutputError, match="expected 'K', 'O' or 'N'"):
        decode_message(update)


def test_negative_cell_length_raises() -> None:
    insert = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"t" + struct.pack(
        "!i", -1)
    with pytest.raises(PgOutputError, match="overruns"):
        decode_message(insert)


def test_invalid_utf8_raises() -> None:
    with pytest.raises(PgOutputError, match="UnicodeDecodeError"):
        decode_message(encode(Insert(1, ("x",))).replace(b"x", b"\xff"))


def _text_relation(oid: int = 7, *names: str) -> Relation:
    return Relation(oid, "public", "t", "d",
                    tuple(Column(1 if i == 0 else 0, n, INT4 if i == 0 else TEXT, -1)
                          for i, n in enumerate(names or ("id", "v"))))


BEGIN = Begin(Lsn(100), PG_EPOCH, 5)
COMMIT = Commit(0, Lsn(100), Lsn(120), PG_EPOCH)


def test_change_for_an_unknown_relation_raises() -> None:
    decoder = ChangeDecoder()
    decoder.feed(encode(BEGIN))
    with pytest.raises(PgOutputError, match="relation oid 7 before its Relation"):
        decoder.feed(encode(Insert(7, ("1", "a"))))
    with pytest.raises(PgOutputError, match="relation oid 8"):
        decoder.feed(encode(Truncate(0, (8,))))


def test_change_outside_a_transaction_raises() -> None:
    decoder = ChangeDecoder()
    decoder.feed(encode(_text_relation()))
    with pytest.raises(PgOutputError, match="outside a transaction"):
        decoder.feed(encode(Insert(7, ("1", "a"))))
    with pytest.raises(PgOutputError, match="without a Begin"):
        decoder.feed(encode(COMMIT))


def test_commit_of_another_transaction_raises() -> None:
    decoder = ChangeDecoder()
    decoder.feed(encode(BEGIN))
    with pytest.raises(PgOutputError, match="closes a transaction begun"):
        decoder.feed(encode(Commit(0, Lsn(101), Lsn(120), PG_EPOCH)))


def test_tuple_not_matching_the_relation_raises() -> None:
    decoder = ChangeDecoder()
    decoder.feed_all([encode(BEGIN), encode(_text_relation())])
    with pytest.raises(PgOutputError, match="tuple of 3 cells for 2 columns"):
        decoder.feed(encode(Insert(7, ("1", "a", "b"))))


def test_unconvertible_cell_raises() -> None:
    decoder = ChangeDecoder()
    decoder.feed_all([encode(BEGIN), encode(_text_relation())])
    with pytest.raises(PgOutputError, match=r"t\.id: cannot convert 'one'"):
        decoder.feed(encode(Insert(7, ("one", "a"))))


def test_a_new_begin_discards_an_unfinished_transaction() -> None:
    decoder = ChangeDecoder()
    decoder.feed_all([encode(BEGIN), encode(_text_relation()), encode(Insert(7, ("1", "a")))])
    assert decoder.in_transaction
    found = decoder.feed_all([encode(BEGIN), encode(Insert(7, ("2", "b"))), encode(COMMIT)])
    assert found == [Transaction(5, Lsn(100), Lsn(120), PG_EPOCH,
                                 (RowChange("insert", "t", {"id": 2, "v": "b"}, None),))]


@settings(deadline=None)
@given(st.binary(max_size=64), st.sampled_from(b"BCORYIUDTM"))
def test_arbitrary_bytes_never_escape_as_another_exception(body: bytes, kind: int) -> None:
    with contextlib.suppress(PgOutputError):
        decode_message(bytes([kind]) + body)


# ---------------------------------------------------------------------------- round trips


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def _tuple(cells: tuple[Cell, ...]) -> bytes:
    out = [struct.pack("!H", len(cells))]
    for cell in cells:
        if cell is None:
            out.append(b"n")
        elif cell is UNCHANGED:
            out.append(b"u")
        elif isinstance(cell, str):
            raw = cell.encode()
            out.append(b"t" + struct.pack("!i", len(raw)) + raw)
        else:
            assert isinstance(cell, bytes)
            out.append(b"b" + struct.pack("!i", len(cell)) + cell)
    return b"".join(out)


def _micros(moment: datetime) -> int:
    return (moment - PG_EPOCH) // timedelta(microseconds=1)


def encode(message: Message) -> bytes:
    """The pgoutput v1 wire form of a message (test-only encoder)."""
    match message:
        case Begin(lsn, time, xid):
            return b"B" + struct.pack("!QqI", lsn, _micros(time), xid)
        case Commit(flags, lsn, end, time):
            return b"C" + struct.pack("!BQQq", flags, lsn, end, _micros(time))
        case Origin(lsn, name):
            return b"O" + struct.pack("!Q", lsn) + _cstring(name)
        case Relation(oid, namespace, name, identity, columns):
            return (b"R" + struct.pack("!I", oid) + _cstring(namespace) + _cstring(name)
                    + identity.encode() + struct.pack("!H", len(columns))
                    + b"".join(bytes([c.flags]) + _cstring(c.name)
                               + struct.pack("!Ii", c.type_oid, c.type_modifier)
                               for c in columns))
        case TypeInfo(oid, namespace, name):
            return b"Y" + struct.pack("!I", oid) + _cstring(namespace) + _cstring(name)
        case Insert(oid, new):
            return b"I" + struct.pack("!I", oid) + b"N" + _tuple(new)
        case Update(oid, new, old, kind):
            head = b"" if old is None else (kind or "O").encode() + _tuple(old)
            return b"U" + struct.pack("!I", oid) + head + b"N" + _tuple(new)
        case Delete(oid, old, kind):
            return b"D" + struct.pack("!I", oid) + kind.encode() + _tuple(old)
        case Truncate(options, oids):
            return b"T" + struct.pack(f"!IB{len(oids)}I", len(oids), options, *oids)
        case LogicalMessage(flags, lsn, prefix, content):
            return (b"M" + struct.pack("!BQ", flags, lsn) + _cstring(prefix)
                    + struct.pack("!i", len(content)) + content)
    raise AssertionError(message)


lsns = st.integers(0, 2**64 - 1).map(Lsn)
u32 = st.integers(0, 2**32 - 1)
names = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                max_size=20)
times = st.datetimes(datetime(1900, 1, 1), datetime(2300, 1, 1), timezones=st.just(UTC))
cells: st.SearchStrategy[Cell] = st.one_of(
    st.none(), st.just(UNCHANGED), st.text(st.characters(exclude_categories=["Cs"])),
    st.binary(max_size=40),
)
cell_tuples = st.lists(cells, max_size=8).map(tuple)
columns = st.builds(Column, st.integers(0, 255), names, u32, st.integers(-(2**31), 2**31 - 1))
any_message: st.SearchStrategy[Message] = st.one_of(
    st.builds(Begin, lsns, times, u32),
    st.builds(Commit, st.integers(0, 255), lsns, lsns, times),
    st.builds(Origin, lsns, names),
    st.builds(Relation, u32, names, names, st.sampled_from("dnfi"),
              st.lists(columns, max_size=6).map(tuple)),
    st.builds(TypeInfo, u32, names, names),
    st.builds(Insert, u32, cell_tuples),
    st.builds(Update, u32, cell_tuples),
    st.builds(Update, u32, cell_tuples, cell_tuples, st.sampled_from(["K", "O"])),
    st.builds(Delete, u32, cell_tuples, st.sampled_from(["K", "O"])),
    st.builds(Truncate, st.integers(0, 255), st.lists(u32, max_size=5).map(tuple)),
    st.builds(LogicalMessage, st.integers(0, 255), lsns, names, st.binary(max_size=40)),
)


@settings(deadline=None, max_examples=500)
@given(any_message)
def test_decode_inverts_encode(message: Message) -> None:
    assert decode_message(encode(message)) == message


@settings(deadline=None)
@given(st.data())
def test_decoder_keeps_unchanged_values_out_of_new_rows(data: st.DataObject) -> None:
    width = data.draw(st.integers(1, 6), label="width")
    column_names = [f"c{i}" for i in range(width)]
    full = data.draw(st.booleans(), label="full identity")
    relation = Relation(9, "public", "t", "f" if full else "d",
                        tuple(Column(1 if full or i == 0 else 0, n, TEXT, -1)
                              for i, n in enumerate(column_names)))
    new = tuple(data.draw(st.lists(cells, min_size=width, max_size=width), label="new"))
    old_cells = st.one_of(st.none(), st.text(), st.binary(max_size=8))
    old = (tuple(data.draw(st.lists(old_cells, min_size=width, max_size=width), label="old"))
           if full else None)
    update = Update(9, new, old, "O" if full else None)
    (transaction,) = ChangeDecoder().feed_all(encode(m) for m in (BEGIN, relation, update, COMMIT))
    (change,) = transaction.changes
    old_row = None if old is None else dict(zip(column_names, old, strict=True))
    expected: dict[str, Any] = {}
    unchanged = set()
    for name, cell in zip(column_names, new, strict=True):
        if cell is not UNCHANGED:
            expected[name] = cell
        elif old_row is not None:
            expected[name] = old_row[name]
        else:
            unchanged.add(name)
    assert change == RowChange("update", "t", expected, old_row, frozenset(unchanged))
    assert change.new is not None and not unchanged & change.new.keys()


# ---------------------------------------------------------------------------- deep JSON


def _json_relation(oid: int = 9) -> Relation:
    return Relation(oid, "public", "segments", "f",
                    (Column(1, "id", INT4, -1), Column(0, "filter", JSONB, -1)))


@pytest.mark.parametrize("levels", [300, 1000, 100_000])
def test_json_nested_beyond_any_parser_decodes_to_a_marker(levels: int) -> None:
    from indexer.jsonvalues import MAX_JSON_DEPTH, TooDeepJson

    deep = '{"a":' * levels + "1" + "}" * levels
    deeper = '{"a":' * levels + "2" + "}" * levels
    decoder = ChangeDecoder()
    (transaction,) = decoder.feed_all([
        encode(BEGIN), encode(_json_relation()), encode(Insert(9, ("1", deep))),
        encode(Update(9, ("1", deeper), ("1", deep), "O")),
        encode(Update(9, ("1", deeper), ("1", deeper), "O")),
        encode(Delete(9, ("1", deeper), "O")), encode(COMMIT),
    ])
    insert, changed, same, delete = transaction.changes
    assert insert.new is not None and isinstance(insert.new["filter"], TooDeepJson)
    assert insert.new["filter"].depth == levels > MAX_JSON_DEPTH
    assert changed.old is not None and changed.new is not None
    assert changed.old["filter"] != changed.new["filter"]  # still compared, by text
    assert same.old is not None and same.new is not None
    assert same.old["filter"] == same.new["filter"]
    assert delete.old is not None and isinstance(delete.old["filter"], TooDeepJson)


def test_json_at_the_depth_limit_is_parsed() -> None:
    from indexer.jsonvalues import MAX_JSON_DEPTH

    value = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    decoder = ChangeDecoder()
    (transaction,) = decoder.feed_all([
        encode(BEGIN), encode(_json_relation()), encode(Insert(9, ("1", value))), encode(COMMIT)
    ])
    (insert,) = transaction.changes
    assert insert.new is not None and isinstance(insert.new["filter"], list)
