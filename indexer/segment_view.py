"""The filter view: the customer object flattened into the typed values segment filters compare.

Both evaluators of a segment filter (docs/api.md §4) read the view and nothing else: the
Python predicate of ``indexer.segment_filter`` and the Elasticsearch query of
``indexer.segment_query``, over the terms the indexer writes from :func:`view_terms`.
Every cap below therefore applies to both alike, and every value is typed once, here.

* A view maps a dotted path to a :class:`Leaf`: exactly the values a dotted path reaches by
  walking objects by key from the customer object. Keys that are not strings, are empty or
  hold a dot or a NUL are skipped (no dotted path names them; NUL ends a path in the indexed
  terms, and Postgres ``jsonb`` holds none anyway). JSON null (and a missing key) is no
  leaf: the field is unknown. Lists are never walked into.
* An object or a list is a *composite* leaf: it exists (``$has_value``, ``$is_not``,
  ``$not_in`` hold) and equals, orders and contains nothing. Objects are walked into as well.
  So is any other value no typed field fits (a non-JSON Python object).
* Depth: paths of at most :data:`MAX_PATH_NAMES` names and :data:`MAX_PATH_LENGTH`
  characters; an object at the last level is a composite leaf whose members are not in the
  view, and a longer key's leaf and subtree are left out. ``compile_filter`` refuses longer
  field paths, so no filter names a dropped leaf by its depth or length.
* Size: the object's own fields (every top-level member, ``address`` and ``metadata``
  included, and everything below the others) are always in the view. Below the tenant-defined
  ``address`` and ``metadata`` together at most :data:`MAX_TENANT_LEAVES` leaves are kept, in
  document order, depth first (a parent before its members); the rest are dropped and read as
  unknown. Tenants' JSON is unbounded; the index and every evaluation must not be.
* A :class:`Leaf` holds precomputed values, each ``None`` when it does not apply:
  ``s`` the string (only strings of at most :data:`MAX_VIEW_STRING` characters: a longer one
  equals, contains, starts and ends with nothing); ``n`` the number for equality (a JSON
  number, never a boolean, as an IEEE double: ``-0.0`` is ``0.0``; a number no finite double
  holds, such as a huge integer, has none); ``o`` the number for ordering (``n``, or a numeric
  string's value: ASCII decimal notation of at most 64 characters, finite); ``t`` the instant
  in epoch microseconds of a string of at most 64 characters that ``datetime.fromisoformat``
  parses (naive is UTC, a date alone is midnight); ``b`` a boolean.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cache.readmodel.indices import ViewLeaf

MAX_PATH_NAMES: Final = 8
"""Names in a dotted path: the view's depth."""
MAX_PATH_LENGTH: Final = 512
"""Characters in a dotted path: far below the 32,766 bytes a keyword term may hold."""
MAX_TENANT_LEAVES: Final = 200
"""Leaves below ``address`` and ``metadata`` together."""
MAX_VIEW_STRING: Final = 512
"""Characters of a string value the view keeps for equality and text operators."""
TENANT_FIELDS: Final = frozenset({"address", "metadata"})
MAX_SCALAR_TEXT: Final = 64
"""Longer strings are neither numbers nor instants; also keeps float() and fromisoformat()
cheap on every customer value."""

NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Characters a numeric string can start with ("" too: the pattern then refuses it).
_NUMBER_STARTS: Final = "+-.0123456789"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


# Not frozen: a frozen dataclass's __init__ costs four times as much, and a view holds one
# leaf per value of every customer rebuilt. Nothing changes a leaf once made.
@dataclass(slots=True)
class Leaf:
    """One value of the view, typed once; see the module docstring for each field."""

    s: str | None = None
    n: float | None = None
    o: float | None = None
    t: int | None = None
    b: bool | None = None


FilterView = Mapping[str, Leaf]

COMPOSITE: Final = Leaf()
_TRUE: Final = Leaf(b=True)
_FALSE: Final = Leaf(b=False)


def as_double(value: object) -> float | None:
    """A JSON number (never a boolean) as a finite double, ``-0.0`` read as ``0.0``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the double range
        return None
    # Adding 0.0 turns -0.0 into 0.0 and changes nothing else: Elasticsearch tells the two
    # apart in term and range queries, Python does not.
    return number + 0.0 if math.isfinite(number) else None


def as_order_number(value: object) -> float | None:
    """The number an ordering operator compares: a JSON number or a numeric string."""
    if isinstance(value, str):
        if len(value) > MAX_SCALAR_TEXT or NUMBER.fullmatch(value) is None:
            return None
        number = float(value)
        return number + 0.0 if math.isfinite(number) else None
    return as_double(value)


def as_instant_us(value: object) -> int | None:
    """Epoch microseconds of an ISO 8601 string (naive is UTC), else None."""
    if not isinstance(value, str) or not 7 <= len(value) <= MAX_SCALAR_TEXT:
        return None
    # fromisoformat reads four ASCII digits of year first: most strings fail here, without
    # the cost of an exception (a street number, a phone number).
    if not value[:4].isascii() or not value[:4].isdigit():
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // _MICROSECOND


def leaf_of(value: object) -> Leaf | None:
    """The leaf of one value; None for JSON null (unknown)."""
    # Exact types first: this runs for every value of every rebuilt customer, and a plain
    # str or int skips the slower subclass checks.
    kind = type(value)
    if kind is str or isinstance(value, str):
        text = str(value)
        return Leaf(
            text if len(text) <= MAX_VIEW_STRING else None,
            None,
            as_order_number(text) if text[:1] in _NUMBER_STARTS else None,
            as_instant_us(text),
        )
    if value is None:
        return None
    if kind is bool or isinstance(value, bool):
        return _TRUE if value else _FALSE
    if kind is int or kind is float or isinstance(value, int | float):
        number = as_double(value)
        return Leaf(None, number, number) if number is not None else COMPOSITE
    return COMPOSITE


def filter_view(body: object) -> dict[str, Leaf]:
    """Flatten a customer object into its view; anything but an object has an empty view."""
    view: dict[str, Leaf] = {}
    if isinstance(body, Mapping):
        _walk(body, "", 0, view, None, [MAX_TENANT_LEAVES])
    return view


def _walk(
    parent: Mapping[Any, Any],
    prefix: str,
    names: int,
    view: dict[str, Leaf],
    budget: list[int] | None,
    tenant: list[int],
) -> None:
    """Add the members of ``parent`` (``names`` deep) to the view, depth first. ``tenant``
    holds the tenant leaves left; ``budget`` is it below a tenant field, else None."""
    # The recursion is bounded by MAX_PATH_NAMES, whatever the input's depth.
    if names >= MAX_PATH_NAMES:
        return
    for key, value in parent.items():
        if not isinstance(key, str) or not key or "." in key or "\x00" in key:
            continue  # no dotted path names it
        path = f"{prefix}.{key}" if prefix else key
        if len(path) > MAX_PATH_LENGTH:
            continue  # nor anything below it: longer still
        leaf = leaf_of(value)
        if leaf is None:
            continue
        if budget is not None:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        view[path] = leaf
        if type(value) is dict or isinstance(value, Mapping):
            below = tenant if names == 0 and key in TENANT_FIELDS else budget
            _walk(value, path, names + 1, view, below, tenant)


# --- the indexed form -----------------------------------------------------------------------
#
# A view is indexed as plain keyword terms on the customer document itself, in sub-fields of
# ``Field.FILTER_VIEW``: ``<path>NUL<value>`` in ``s``, ``n``, ``o``, ``t`` and ``b``. A path
# holds no NUL, so a term names its path unambiguously, and "the leaf at P passes test Q" is
# one term, prefix, wildcard or range query on one sub-field. Numbers and instants are written
# as fixed-width hexadecimal whose byte order is their numeric order, so a range of keyword
# terms is a numeric range.
#
# Each value costs Elasticsearch time to index, so none is written twice: ``p`` holds only the
# paths of leaves without a string, number or boolean (composites, long strings), which is
# what tells them from unknown fields; ``o`` only numeric strings (a number's ordering value is
# its ``n``). A leaf exists when its path is in ``p`` or has a term in ``s``, ``n`` or ``b``
# (``t`` and ``o`` come with ``s``). As nested entries (one Lucene document per leaf, about 30
# per customer) the view made rewriting a customer document take twice as long
# (``bench/segments.py``, its Elasticsearch floor: 4,247 against 8,246 documents/s).

SEPARATOR: Final = "\x00"
# Sorts after SEPARATOR and before every encoded value: the exclusive end of a path's terms.
PATH_END: Final = "\x01"
_SIGN: Final = 1 << 63
_MASK: Final = (1 << 64) - 1


def number_key(number: float) -> str:
    """16 hex digits ordered as the double is: negative numbers have every bit flipped,
    others the sign bit set (IEEE 754 bits then sort as unsigned integers)."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", number + 0.0))
    bits = (~bits & _MASK) if bits & _SIGN else (bits | _SIGN)
    return f"{bits:016x}"


def instant_key(instant_us: int) -> str:
    """16 hex digits ordered as the signed 64-bit instant is (clamped to that range)."""
    clamped = min(max(instant_us, -_SIGN), _SIGN - 1)
    return f"{clamped + _SIGN:016x}"


def boolean_key(flag: bool) -> str:
    return "true" if flag else "false"


def term(path: str, value: str) -> str:
    """The indexed term of one value at ``path``."""
    return f"{path}{SEPARATOR}{value}"


def view_terms(view: FilterView) -> dict[str, list[str]]:
    """The sub-fields of ``Field.FILTER_VIEW`` (see above); empty ones left out."""
    paths: list[str] = []
    strings: list[str] = []
    numbers: list[str] = []
    orders: list[str] = []
    instants: list[str] = []
    flags: list[str] = []
    for path, leaf in view.items():
        head = path + SEPARATOR
        if leaf.s is not None:
            strings.append(head + leaf.s)
            if leaf.o is not None:
                orders.append(head + number_key(leaf.o))
            if leaf.t is not None:
                instants.append(head + instant_key(leaf.t))
        elif leaf.n is not None:
            numbers.append(head + number_key(leaf.n))
        elif leaf.b is not None:
            flags.append(head + boolean_key(leaf.b))
        else:
            paths.append(path)
    fields = {
        ViewLeaf.P: paths,
        ViewLeaf.S: strings,
        ViewLeaf.N: numbers,
        ViewLeaf.O: orders,
        ViewLeaf.T: instants,
        ViewLeaf.B: flags,
    }
    return {name: values for name, values in fields.items() if values}
