"""Every Redis key and channel name the project uses, built here and nowhere else.

With the default prefix ``loyalty:`` (each process passes its configured prefix):

    loyalty:{p_1}:v:V1          voucher V1 of project p_1            (envelope)
    loyalty:{p_1}:c:C1          customer                              (envelope)
    loyalty:{p_1}:m:K1          campaign                              (envelope)
    loyalty:{p_1}:s:S1          segment                               (envelope)
    loyalty:{p_1}:vc:SUMMER10   voucher code -> voucher id            (envelope, data = id)
    loyalty:{p_1}:cs:crm-42     customer source_id -> customer id     (envelope, data = id)
    loyalty:{p_1}:sm:C1         segment membership of customer C1    (msgpack, see codec.py)
    loyalty:{p_1}:sc            segment id -> member count           (hash)
    loyalty:{p_1}:ev            segment events of the project        (stream)
    loyalty:ak:app_1            API key record of app id app_1        (envelope)
    loyalty:rl:app_1            rate-limit bucket of app_1, current window (integer)
    loyalty:wm                  applied watermark                     (16 hex digits)
    loyalty:ws:{loyalty:wm}     each indexer shard's applied position (hash, 16 hex digits)
    loyalty:sj                  pending segment recompute jobs        (hash, see codec.py)
    loyalty:rf, loyalty:rf:{7}  replication fences (integers, see cache/replicas.py)
    loyalty:inv:{loyalty:wm}    invalidation channel                  (sharded pub/sub)

Every key about a project's object carries the project id as a Redis Cluster hash tag, so all
keys of one project live in one slot and one script call may write several of them (the
membership script writes records, counts and events of one project at once). Codes are
one or two letters because these strings are built and hashed on every read. Only object and
alias keys (and API keys) hold envelopes: ``is_envelope_key`` tells scans of envelopes which
keys to read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cache.readmodel.documents import AliasKind
from cache.types import ObjectKind

DEFAULT_PREFIX = "loyalty:"


# StrEnum members hash and compare as their values, so plain strings find the same codes.
_OBJECT_CODES: dict[str, str] = {
    ObjectKind.VOUCHER: "v",
    ObjectKind.CUSTOMER: "c",
    ObjectKind.CAMPAIGN: "m",
    ObjectKind.SEGMENT: "s",
}
_OBJECT_CODE_SET = frozenset(_OBJECT_CODES.values())
_KIND_OF_OBJECT_CODE = {code: ObjectKind(kind) for kind, code in _OBJECT_CODES.items()}
_ALIAS_CODES: dict[str, str] = {
    AliasKind.VOUCHER_CODE: "vc",
    AliasKind.CUSTOMER_SOURCE_ID: "cs",
}
_ENVELOPE_CODE_SET = _OBJECT_CODE_SET | frozenset(_ALIAS_CODES.values())
_MEMBERSHIP_CODE = "sm"
_SEGMENT_COUNTS_CODE = "sc"
_SEGMENT_EVENTS_CODE = "ev"
# Matches both codes above that follow it ("sm:<id>", "sc") and not "ev": one SCAN pass finds
# every piece of membership state and leaves the event streams alone.
_MEMBERSHIP_STATE_GLOB = "s[mc]*"
_GLOB_SPECIAL = frozenset("*?[]\\")


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN ``MATCH`` pattern (ids may hold ``*`` or ``[``)."""
    return "".join("\\" + char if char in _GLOB_SPECIAL else char for char in text)


def project_hash_tag(project_id: str) -> str:
    """The text placed between ``{`` and ``}`` for this project.

    Redis hashes the text up to the first ``}``, and hashes the whole key when that text is
    empty, so an id that is empty or holds ``}`` (or ``%``, the escape) is percent-escaped
    behind a leading ``%``. The mapping stays injective: plain ids never contain ``%``.
    """
    if project_id and "}" not in project_id and "%" not in project_id:
        return project_id
    return "%" + project_id.replace("%", "%25").replace("}", "%7D")


_UNESCAPE = {"%25": "%", "%7D": "}"}
_ESCAPED = re.compile("%25|%7D")


def _project_of_tag(tag: str) -> str:
    """The project id a hash tag was made from (``project_hash_tag`` inverted)."""
    if not tag.startswith("%"):
        return tag
    return _ESCAPED.sub(lambda match: _UNESCAPE[match.group()], tag[1:])


def hash_tag_of(key: str) -> str | None:
    """The part of ``key`` that Redis Cluster hashes when it has a non-empty ``{...}``."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


@dataclass(frozen=True, slots=True)
class ProjectKeys:
    """The heads of one project's object and alias keys: a key is its head plus the id (or
    the alias value). Built once per project (the read API keeps it with the caller), so the
    hot path concatenates two strings instead of formatting a key."""

    voucher: str
    customer: str
    campaign: str
    segment: str
    voucher_code: str
    customer_source_id: str


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Builds keys under one configured prefix; tests use a unique prefix each."""

    prefix: str = DEFAULT_PREFIX
    watermark_key: str = field(init=False, repr=False, compare=False)
    shard_watermarks_key: str = field(init=False, repr=False, compare=False)
    channel: str = field(init=False, repr=False, compare=False)
    app_key_prefix: str = field(init=False, repr=False, compare=False)
    rate_limit_prefix: str = field(init=False, repr=False, compare=False)
    project_keys_prefix: str = field(init=False, repr=False, compare=False)
    segment_jobs_key: str = field(init=False, repr=False, compare=False)
    reindex_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            # A brace in the prefix would become the hash tag of every key.
            raise ValueError(f"Redis key prefix must not contain braces: {self.prefix!r}")
        p = self.prefix
        object.__setattr__(self, "watermark_key", f"{p}wm")
        # In the watermark's slot, beside it (``indexer.shards``: fields "N:k").
        object.__setattr__(self, "shard_watermarks_key", f"{p}ws:{{{p}wm}}")
        # A sharded channel (SPUBLISH) in the watermark key's slot: the watermark script
        # publishes on it, and a cluster lets a script reach its own keys' slot only.
        object.__setattr__(self, "channel", f"{p}inv:{{{p}wm}}")
        object.__setattr__(self, "app_key_prefix", f"{p}ak:")
        object.__setattr__(self, "rate_limit_prefix", f"{p}rl:")
        object.__setattr__(self, "project_keys_prefix", f"{p}{{")
        object.__setattr__(self, "segment_jobs_key", f"{p}sj")
        # The checkpoint of the reindex in progress (``indexer.reindex_state``).
        object.__setattr__(self, "reindex_key", f"{p}rx")

    def fence_key(self, number: int | None = None) -> str:
        """The replication fence of one server, or fence ``number`` of a cluster: the
        number is the hash tag, so some number lands in any slot (``cache/replicas.py``)."""
        if number is None:
            return f"{self.prefix}rf"
        return f"{self.prefix}rf:{{{number}}}"

    def object_key(self, project_id: str, kind: str, object_id: str) -> str:
        """Key of the envelope of one object (``kind``: an ``ObjectKind``)."""
        return self._coded_key(project_id, _OBJECT_CODES, "object", kind, object_id)

    def _project_head(self, project_id: str) -> str:
        """What every key of the project's objects and aliases starts with."""
        return f"{self.project_keys_prefix}{project_hash_tag(project_id)}}}:"

    def project_keys(self, project_id: str) -> ProjectKeys:
        head = self._project_head(project_id)
        return ProjectKeys(
            voucher=f"{head}{_OBJECT_CODES[ObjectKind.VOUCHER]}:",
            customer=f"{head}{_OBJECT_CODES[ObjectKind.CUSTOMER]}:",
            campaign=f"{head}{_OBJECT_CODES[ObjectKind.CAMPAIGN]}:",
            segment=f"{head}{_OBJECT_CODES[ObjectKind.SEGMENT]}:",
            voucher_code=f"{head}{_ALIAS_CODES[AliasKind.VOUCHER_CODE]}:",
            customer_source_id=f"{head}{_ALIAS_CODES[AliasKind.CUSTOMER_SOURCE_ID]}:",
        )

    def alias_key(self, project_id: str, kind: str, value: str) -> str:
        """Key of an alias envelope whose data is the target object id (``kind``: ``AliasKind``)."""
        return self._coded_key(project_id, _ALIAS_CODES, "alias", kind, value)

    def _coded_key(
        self, project_id: str, codes: dict[str, str], what: str, kind: str, tail: str
    ) -> str:
        try:
            code = codes[kind]
        except KeyError:
            raise ValueError(f"unknown {what} kind: {kind!r}") from None
        return f"{self._project_head(project_id)}{code}:{tail}"

    def is_object_key(self, key: str) -> bool:
        """Whether ``key`` is the key of an object's envelope (not an alias, not global)."""
        if not key.startswith(self.project_keys_prefix) or "}:" not in key:
            return False
        code = key.split("}:", 1)[1].split(":", 1)[0]
        return code in _OBJECT_CODE_SET

    def project_keys_pattern(self, project_id: str | None = None) -> str:
        """A SCAN pattern covering every key of one project (or of all projects): objects,
        aliases and membership state alike (``object_of_key`` tells objects apart)."""
        if project_id is None:
            return f"{_glob_escape(self.project_keys_prefix)}*"
        return f"{_glob_escape(self._project_head(project_id))}*"

    def object_of_key(self, key: str) -> tuple[str, ObjectKind, str] | None:
        """``(project_id, kind, object_id)`` of an object key (``None``: not an object key);
        the inverse of ``object_key``."""
        if not key.startswith(self.project_keys_prefix):
            return None
        start = len(self.project_keys_prefix)
        end = key.find("}", start)
        if end < 0 or key[end + 1 : end + 2] != ":":
            return None
        code, colon, object_id = key[end + 2 :].partition(":")
        kind = _KIND_OF_OBJECT_CODE.get(code)
        if kind is None or not colon:
            return None
        return _project_of_tag(key[start:end]), kind, object_id

    def _project_code(self, key: str) -> tuple[str, bool] | None:
        """The code of a project key and whether an id follows it (``None``: not a project
        key). The tag holds no ``}`` (``project_hash_tag``), so the first one closes it."""
        if not key.startswith(self.project_keys_prefix):
            return None
        end = key.find("}", len(self.project_keys_prefix))
        if end < 0 or key[end + 1 : end + 2] != ":":
            return None
        code, colon, _ = key[end + 2 :].partition(":")
        return code, bool(colon)

    def is_envelope_key(self, key: str) -> bool:
        """Whether ``key`` holds an envelope: an object, an alias or an API key record. Scans
        that read envelope headers skip the rest (membership records, hashes, streams)."""
        if key.startswith(self.app_key_prefix):
            return True
        coded = self._project_code(key)
        return coded is not None and coded[1] and coded[0] in _ENVELOPE_CODE_SET

    # -- segment membership (cache/membership.py) -------------------------------------------

    def membership_key(self, project_id: str, customer_id: str) -> str:
        """Key of one customer's segment membership record in one project."""
        return f"{self._project_head(project_id)}{_MEMBERSHIP_CODE}:{customer_id}"

    def membership_of_key(self, key: str) -> tuple[str, str] | None:
        """``(project_id, customer_id)`` of a membership record's key (``None``: another
        key); the inverse of ``membership_key``."""
        coded = self._project_code(key)
        if coded is None or coded != (_MEMBERSHIP_CODE, True):
            return None
        start = len(self.project_keys_prefix)
        end = key.find("}", start)
        customer_id = key[end + 2 + len(_MEMBERSHIP_CODE) + 1 :]
        return _project_of_tag(key[start:end]), customer_id

    def segment_counts_key(self, project_id: str) -> str:
        """Key of the hash of the project's member counts (segment id -> count)."""
        return f"{self._project_head(project_id)}{_SEGMENT_COUNTS_CODE}"

    def segment_events_key(self, project_id: str) -> str:
        """Key of the stream of the project's segment events."""
        return f"{self._project_head(project_id)}{_SEGMENT_EVENTS_CODE}"

    def membership_state_pattern(self, project_id: str | None = None) -> str:
        """A SCAN pattern covering every membership record and counts hash (of one project,
        or of all); it may match other keys too, which ``is_membership_state_key`` tells
        apart. Event streams are not membership state and stay out."""
        if project_id is None:
            head = f"{_glob_escape(self.project_keys_prefix)}*}}:"
        else:
            head = _glob_escape(self._project_head(project_id))
        return head + _MEMBERSHIP_STATE_GLOB

    def is_membership_state_key(self, key: str) -> bool:
        """Whether ``key`` is a membership record or a counts hash."""
        coded = self._project_code(key)
        if coded is None:
            return False
        code, has_id = coded
        return (code == _MEMBERSHIP_CODE and has_id) or (
            code == _SEGMENT_COUNTS_CODE and not has_id
        )

    def app_key(self, app_id: str) -> str:
        """Key of the API key record of one app id (global: an app id names its project)."""
        return self.app_key_prefix + app_id

    def rate_limit_key(self, app_id: str) -> str:
        """Key of the token bucket of one app id for the current window."""
        return self.rate_limit_prefix + app_id
