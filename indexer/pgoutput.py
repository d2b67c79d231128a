"""pgoutput, protocol version 1: one message's bytes to a frozen value, a stream to transactions.

``decode_message`` is pure: it parses the wire format of PostgreSQL 15's "Logical
Replication Message Formats" and raises ``PgOutputError`` on anything malformed.
``ChangeDecoder`` keeps the relation cache and turns a stream of messages into
``Transaction`` values holding typed ``RowChange`` rows (cells converted by ``pgtypes``).

Both run once per change on the indexing hot path: fixed parts are read with precompiled
``struct`` formats at offsets, and each tuple is walked once, column by column.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

from cache.types import Lsn
from indexer.errors import PgOutputError
from indexer.pgtypes import Converter, converter_for

# ---------------------------------------------------------------------------- wire values


class Unchanged(enum.Enum):
    """Cell kind ``u``: a TOASTed value the update left alone; Postgres does not send it."""

    TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.TOAST

# A tuple cell: text (kind ``t``, decoded UTF-8), binary (``b``), null (``n``) or unchanged.
Cell: TypeAlias = str | bytes | Unchanged | None
OldKind: TypeAlias = Literal["K", "O"]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
KEY_FLAG: Final = 1
TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: Lsn  # the LSN of the transaction's commit record
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: Lsn  # where the commit record starts (equals Begin.final_lsn)
    end_lsn: Lsn  # where it ends: the position to confirm to the slot
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: Lsn  # on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & KEY_FLAG)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str  # empty for pg_catalog
    name: str
    replica_identity: str  # relreplident: d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """Message ``Y``: describes a non-built-in type before a Relation that uses it."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: tuple[Cell, ...]
    old: tuple[Cell, ...] | None = None  # present when the key changed (K) or identity is FULL
    old_kind: OldKind | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[Cell, ...]
    old_kind: OldKind


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """Message ``M`` (``pg_logical_emit_message``), sent only with the ``messages`` option."""

    flags: int
    lsn: Lsn
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)

# ---------------------------------------------------------------------------- wire decoding

_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_COLUMN_TAIL = struct.Struct("!Ii")  # type oid, type modifier
_TRUNCATE_HEAD = struct.Struct("!IB")
_MESSAGE_HEAD = struct.Struct("!BQ")

_TEXT, _NULL, _UNCHANGED, _BINARY = ord("t"), ord("n"), ord("u"), ord("b")
_VALUE_KINDS = frozenset((_TEXT, _BINARY))


def _timestamp(microseconds: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=microseconds)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)  # ValueError when the terminator is missing
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[tuple[Cell, ...], int]:
    (count,) = _U16.unpack_from(data, pos)
    pos += 2
    size = len(data)
    cells: list[Cell] = []
    append = cells.append
    unpack_length = _I32.unpack_from
    for _ in range(count):
        kind = data[pos]
        if kind in _VALUE_KINDS:
            start = pos + 5
            pos = start + unpack_length(data, pos + 1)[0]
            if pos > size or pos < start:
                raise PgOutputError(f"cell of {pos - start} bytes overruns the message at {start}")
            append(data[start:pos].decode() if kind == _TEXT else data[start:pos])
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _UNCHANGED:
            append(UNCHANGED)
            pos += 1
        else:
            raise PgOutputError(f"unknown tuple cell kind {chr(kind)!r} at offset {pos}")
    return tuple(cells), pos


def _begin(data: bytes) -> tuple[Message, int]:
    final_lsn, time, xid = _BEGIN.unpack_from(data, 1)
    return Begin(Lsn(final_lsn), _timestamp(time), xid), 1 + _BEGIN.size


def _commit(data: bytes) -> tuple[Message, int]:
    flags, commit_lsn, end_lsn, time = _COMMIT.unpack_from(data, 1)
    return Commit(flags, Lsn(commit_lsn), Lsn(end_lsn), _timestamp(time)), 1 + _COMMIT.size


def _origin(data: bytes) -> tuple[Message, int]:
    (lsn,) = _U64.unpack_from(data, 1)
    name, pos = _string(data, 9)
    return Origin(Lsn(lsn), name), pos


def _relation(data: bytes) -> tuple[Message, int]:
    (oid,) = _U32.unpack_from(data, 1)
    namespace, pos = _string(data, 5)
    name, pos = _string(data, pos)
    identity = chr(data[pos])
    (count,) = _U16.unpack_from(data, pos + 1)
    pos += 3
    columns: list[Column] = []
    for _ in range(count):
        flags = data[pos]
        column_name, pos = _string(data, pos + 1)
        type_oid, type_modifier = _COLUMN_TAIL.unpack_from(data, pos)
        pos += _COLUMN_TAIL.size
        columns.append(Column(flags, column_name, type_oid, type_modifier))
    return Relation(oid, namespace, name, identity, tuple(columns)), pos


def _type(data: bytes) -> tuple[Message, int]:
    (oid,) = _U32.unpack_from(data, 1)
    namespace, pos = _string(data, 5)
    name, pos = _string(data, pos)
    return TypeInfo(oid, namespace, name), pos


def _expect(data: bytes, pos: int, allowed: bytes, what: str) -> int:
    marker = data[pos]
    if marker not in allowed:
        raise PgOutputError(f"expected {what} at offset {pos}, found {chr(marker)!r}")
    return marker


def _insert(data: bytes) -> tuple[Message, int]:
    (oid,) = _U32.unpack_from(data, 1)
    _expect(data, 5, b"N", "'N' (new tuple)")
    new, pos = _tuple(data, 6)
    return Insert(oid, new), pos


def _update(data: bytes) -> tuple[Message, int]:
    (oid,) = _U32.unpack_from(data, 1)
    marker = _expect(data, 5, b"KON", "'K', 'O' or 'N'")
    old: tuple[Cell, ...] | None = None
    old_kind: OldKind | None = None
    pos = 6
    if marker != ord("N"):
        old_kind = "K" if marker == ord("K") else "O"
        old, pos = _tuple(data, pos)
        _expect(data, pos, b"N", "'N' (new tuple)")
        pos += 1
    new, pos = _tuple(data, pos)
    return Update(oid, new, old, old_kind), pos


def _delete(data: bytes) -> tuple[Message, int]:
    (oid,) = _U32.unpack_from(data, 1)
    marker = _expect(data, 5, b"KO", "'K' or 'O'")
    old, pos = _tuple(data, 6)
    return Delete(oid, old, "K" if marker == ord("K") else "O"), pos


def _truncate(data: bytes) -> tuple[Message, int]:
    count, options = _TRUNCATE_HEAD.unpack_from(data, 1)
    pos = 1 + _TRUNCATE_HEAD.size
    end = pos + 4 * count
    if end > len(data):
        raise PgOutputError(f"truncate of {count} relations overruns the message")
    oids = struct.unpack_from(f"!{count}I", data, pos)
    return Truncate(options, oids), end


def _message(data: bytes) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
    prefix, pos = _string(data, 1 + _MESSAGE_HEAD.size)
    (length,) = _I32.unpack_from(data, pos)
    start = pos + 4
    end = start + length
    if length < 0 or end > len(data):
        raise PgOutputError(f"message content of {length} bytes overruns the message")
    return LogicalMessage(flags, Lsn(lsn), prefix, data[start:end]), end


_DECODERS: dict[int, tuple[str, Callable[[bytes], tuple[Message, int]]]] = {
    ord("B"): ("Begin", _begin),
    ord("C"): ("Commit", _commit),
    ord("O"): ("Origin", _origin),
    ord("R"): ("Relation", _relation),
    ord("Y"): ("Type", _type),
    ord("I"): ("Insert", _insert),
    ord("U"): ("Update", _update),
    ord("D"): ("Delete", _delete),
    ord("T"): ("Truncate", _truncate),
    ord("M"): ("Message", _message),
}


def decode_message(data: bytes) -> Message:
    """Parse one pgoutput v1 message; anything malformed raises ``PgOutputError``."""
    if not data:
        raise PgOutputError("empty pgoutput message")
    entry = _DECODERS.get(data[0])
    if entry is None:
        raise PgOutputError(f"unknown pgoutput message type {chr(data[0])!r}")
    name, decode = entry
    try:
        message, end = decode(data)
    except PgOutputError as error:
        raise PgOutputError(f"malformed {name} message: {error}") from None
    except (IndexError, struct.error, ValueError, OverflowError) as error:
        # IndexError/struct.error: truncated; ValueError: missing string terminator or bad
        # UTF-8 or an LSN out of range; OverflowError: a timestamp beyond datetime.
        raise PgOutputError(
            f"malformed {name} message ({len(data)} bytes): {type(error).__name__}: {error}"
        ) from error
    if end != len(data):
        raise PgOutputError(f"{len(data) - end} unexpected bytes after a {name} message")
    return message


# ---------------------------------------------------------------------------- row changes

Op: TypeAlias = Literal["insert", "update", "delete", "truncate"]


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row change, cells converted to Python values.

    ``new`` never holds a column whose value Postgres did not send (an unchanged TOASTed
    value): such columns are named in ``unchanged`` and the consumer keeps what it has.
    ``old`` is the full old row with REPLICA IDENTITY FULL, the key columns only when a
    default-identity update changed the key or for a default-identity delete, else None.
    """

    op: Op
    table: str
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    unchanged: frozenset[str] = frozenset()
    schema: str = "public"


@dataclass(frozen=True, slots=True)
class Transaction:
    xid: int
    commit_lsn: Lsn  # the version of every document this transaction touches
    end_lsn: Lsn  # advance the slot here: advancing to commit_lsn would deliver it again
    commit_time: datetime
    changes: tuple[RowChange, ...]
    # A part of a transaction too large to hold at once (``ChangeDecoder.take_part``): its
    # changes are applied like a whole one's, but the slot cannot move past it.
    partial: bool = False


@dataclass(frozen=True, slots=True)
class _Shape:
    """A relation as the decoder applies it: names and converters in column order."""

    relation: Relation
    columns: tuple[tuple[str, Converter, bool], ...]  # name, converter, is key


def _shape(relation: Relation) -> _Shape:
    columns = tuple((c.name, converter_for(c.type_oid), c.is_key) for c in relation.columns)
    return _Shape(relation, columns)


_EMPTY: frozenset[str] = frozenset()


class ChangeDecoder:
    """Folds a pgoutput stream into transactions, keeping the relation cache.

    A Relation message precedes the first change of a table in every decoding session and
    follows every ALTER; a later one for the same oid replaces the columns, so each change
    is read with the columns it was written with. The cache outlives transactions and
    batches. A Begin while a transaction is open discards the unfinished one: a peek only
    ever returns whole transactions, and the slot sends an interrupted one again whole.
    """

    def __init__(self) -> None:
        self._shapes: dict[int, _Shape] = {}
        self._begin: Begin | None = None
        self._changes: list[RowChange] = []

    @property
    def relations(self) -> Mapping[int, Relation]:
        return {oid: shape.relation for oid, shape in self._shapes.items()}

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def take_part(self, max_changes: int) -> Transaction | None:
        """The changes of the open transaction so far, once there are ``max_changes`` of
        them, as a partial :class:`Transaction` (its commit LSN and time are the Begin's); the
        rest follows in later parts and in the one its Commit completes. A transaction
        committed is visible to the source already, so its parts can be rebuilt as they
        come: memory stays at one part whatever the transaction's size."""
        begin = self._begin
        if begin is None or len(self._changes) < max_changes:
            return None
        part = Transaction(
            begin.xid,
            begin.final_lsn,
            begin.final_lsn,
            begin.commit_time,
            tuple(self._changes),
            partial=True,
        )
        self._changes = []
        return part

    def feed(self, data: bytes) -> Transaction | None:
        """Take one message; returns the transaction its Commit completes, else None."""
        return self.feed_message(decode_message(data))

    def feed_all(self, messages: Iterable[bytes]) -> list[Transaction]:
        transactions = []
        for data in messages:
            transaction = self.feed(data)
            if transaction is not None:
                transactions.append(transaction)
        return transactions

    def feed_message(self, message: Message) -> Transaction | None:
        match message:
            case Insert(oid, new):
                shape = self._change_shape(oid)
                row, unchanged = self._row(shape, new, key_only=False)
                self._add(
                    RowChange(
                        "insert",
                        shape.relation.name,
                        row,
                        None,
                        unchanged,
                        shape.relation.namespace,
                    )
                )
            case Update():
                self._add(self._update(message))
            case Delete(oid, old, old_kind):
                shape = self._change_shape(oid)
                row, _ = self._row(shape, old, key_only=old_kind == "K")
                self._add(
                    RowChange(
                        "delete", shape.relation.name, None, row, _EMPTY, shape.relation.namespace
                    )
                )
            case Truncate(_, oids):
                for oid in oids:
                    relation = self._change_shape(oid).relation
                    self._add(
                        RowChange("truncate", relation.name, None, None, _EMPTY, relation.namespace)
                    )
            case Relation():
                self._shapes[message.oid] = _shape(message)
            case Begin():
                self._begin = message
                self._changes = []
            case Commit():
                return self._commit(message)
            case _:
                pass  # Origin, Type and logical messages carry nothing to index
        return None

    def _commit(self, commit: Commit) -> Transaction:
        begin = self._begin
        if begin is None:
            raise PgOutputError(f"Commit at {commit.commit_lsn} without a Begin")
        if begin.final_lsn != commit.commit_lsn:
            raise PgOutputError(
                f"Commit at {commit.commit_lsn} closes a transaction begun for {begin.final_lsn}"
            )
        transaction = Transaction(
            begin.xid, commit.commit_lsn, commit.end_lsn, commit.commit_time, tuple(self._changes)
        )
        self._begin = None
        self._changes = []
        return transaction

    def _add(self, change: RowChange) -> None:
        if self._begin is None:
            raise PgOutputError(f"{change.op} on {change.table} outside a transaction")
        self._changes.append(change)

    def _change_shape(self, oid: int) -> _Shape:
        shape = self._shapes.get(oid)
        if shape is None:
            raise PgOutputError(f"change for relation oid {oid} before its Relation message")
        return shape

    def _update(self, message: Update) -> RowChange:
        shape = self._change_shape(message.relation_oid)
        new, unchanged = self._row(shape, message.new, key_only=False)
        old = None
        if message.old is not None:
            old, _ = self._row(shape, message.old, key_only=message.old_kind == "K")
            if unchanged:
                # An unchanged value equals the old one: with the old row at hand (REPLICA
                # IDENTITY FULL), give the consumer the full new row.
                filled = frozenset(name for name in unchanged if name in old)
                for name in filled:
                    new[name] = old[name]
                unchanged -= filled
        return RowChange(
            "update", shape.relation.name, new, old, unchanged, shape.relation.namespace
        )

    @staticmethod
    def _row(
        shape: _Shape, cells: tuple[Cell, ...], *, key_only: bool
    ) -> tuple[dict[str, Any], frozenset[str]]:
        if len(cells) != len(shape.columns):
            relation = shape.relation
            raise PgOutputError(
                f"{relation.name}: tuple of {len(cells)} cells for {len(shape.columns)} columns"
            )
        row: dict[str, Any] = {}
        unchanged: list[str] | None = None
        for (name, convert, is_key), cell in zip(shape.columns, cells, strict=True):
            if key_only and not is_key:
                continue  # a key tuple sends the other columns as nulls
            if isinstance(cell, str):
                try:
                    row[name] = convert(cell)
                except (ValueError, ArithmeticError) as error:  # decimal raises the latter
                    raise PgOutputError(
                        f"{shape.relation.name}.{name}: cannot convert {cell!r}: {error}"
                    ) from error
            elif cell is None:
                row[name] = None
            elif cell is UNCHANGED:
                if unchanged is None:
                    unchanged = []
                unchanged.append(name)
            else:
                row[name] = cell  # binary format: left to the consumer
        return row, (frozenset(unchanged) if unchanged else _EMPTY)
