"""One batch of the slot, decoded and handed on in groups of about ``batch`` changes.

A peek returns whole transactions, so a transaction of a million rows comes as a million
rows. Its rows are read a page at a time (``indexer.slot.peek_change_pages``) and handed on
in parts (``ChangeDecoder.take_part``) as they come: a committed transaction is visible to
the source already, so a part can be rebuilt before the rest is read, and memory stays at a
part whatever the transaction's size. The slot only moves past whole transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from indexer.pgoutput import ChangeDecoder, Transaction
from indexer.slot import ChangeRow

ApplyGroup = Callable[[list[Transaction]], Awaitable[None]]


@dataclass(slots=True)
class BatchRead:
    """What a batch held: its whole transactions (a transaction applied in parts keeps only
    its last part's changes here), the rows read and the changes applied."""

    transactions: list[Transaction] = field(default_factory=list)
    rows: int = 0
    changes: int = 0


async def read_batch(
    pages: AsyncIterator[list[ChangeRow]], batch: int, apply: ApplyGroup
) -> BatchRead:
    """Decode ``pages`` and ``apply`` their changes in commit order, in groups of at least
    ``batch`` changes (the last one: what is left), each group at most a transaction or
    part over ``batch``."""
    decoder = ChangeDecoder()
    read = BatchRead()
    pending: list[Transaction] = []
    pending_changes = 0
    async for rows in pages:
        read.rows += len(rows)
        for _lsn, _xid, data in rows:
            transaction = decoder.feed(data)
            if transaction is not None:
                read.transactions.append(transaction)
            else:
                transaction = decoder.take_part(batch)
            if transaction is None:
                continue
            pending.append(transaction)
            pending_changes += len(transaction.changes)
            if pending_changes >= batch:
                await apply(pending)
                read.changes += pending_changes
                pending, pending_changes = [], 0
    if pending:
        await apply(pending)
        read.changes += pending_changes
    return read
