"""The rows of a seed plan: deterministic, realistic demo data for every contract table.

Pure generation, no I/O: ``SeedRows(plan).rows(table)`` yields tuples in the column order of
the ``seed_copy_<table>`` statements of ``sql/seed.sql``. Everything is a function of the plan:
each table draws from its own ``random.Random`` seeded by (seed, table), ids and codes are
bijections of a row's index, and timestamps are a fixed epoch plus seeded offsets. The
stream never depends on how a consumer batches it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from indexer.seed_vocabulary import (
    CAMPAIGN_THEMES,
    CHANNELS,
    CITIES,
    DOMAINS,
    FIRST_NAMES,
    LAST_NAMES,
    PROJECT_NAMES,
    STATIC_SEGMENT_NAMES,
    STREETS,
    TIER_WEIGHTS,
    TIERS,
    UNIT_TYPES,
    auto_segment,
)
from indexer.tables import CONTRACT_TABLES

Row = tuple[Any, ...]

TABLES = CONTRACT_TABLES
# Row indexes are stored in typed arrays and voucher codes hold 40 bits.
MAX_ROWS = 2**31 - 1

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
_MASK64 = 2**64 - 1
_MASK40 = 2**40 - 1
VOUCHER_TYPES = ("DISCOUNT_VOUCHER", "GIFT_VOUCHER", "LOYALTY_CARD")
CAMPAIGN_TYPES = ("DISCOUNT_COUPONS", "GIFT_VOUCHERS", "LOYALTY_PROGRAM")
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


class SeedPlanError(ValueError):
    """The requested counts cannot make a consistent data set."""


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """What to generate. Counts are totals spread over the projects, except ``keys``, which
    is per project; ``seed`` alone decides every value."""

    seed: int = 42
    projects: int = 2
    customers: int = 1_000
    campaigns: int = 12
    vouchers: int = 5_000
    redemptions: int = 3_000
    segments: int = 8
    keys: int = 2

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SeedPlanError(f"{field.name} must be an integer, not {value!r}")
            if field.name != "seed" and not 0 <= value <= MAX_ROWS:
                raise SeedPlanError(f"{field.name} must be between 0 and {MAX_ROWS}, not {value}")
        if self.projects == 0:
            for name in ("customers", "campaigns", "vouchers", "redemptions", "segments"):
                if getattr(self, name) > 0:
                    raise SeedPlanError(f"{name} need at least one project")
        if self.redemptions > 0 and self.vouchers == 0:
            raise SeedPlanError("redemptions need at least one voucher")


def split_evenly(total: int, parts: int) -> list[range]:
    """Contiguous index ranges, one per part, whose sizes differ by at most one."""
    if parts == 0:
        return []
    size, extra = divmod(total, parts)
    ranges, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        ranges.append(range(start, end))
        start = end
    return ranges


def _salt(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"loyalty-seed:{seed}:{purpose}".encode()).digest()[:8])


def _mix64(value: int) -> int:
    """splitmix64's finalizer: a bijection on 64 bits, so distinct indexes give distinct ids."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def id_maker(seed: int, prefix: str, table: str) -> Callable[[int], str]:
    """``index -> id``: unique per table, random-looking, different for every seed."""
    salt = _salt(seed, table)
    return lambda index: f"{prefix}{_mix64((salt + index) & _MASK64):016x}"


def code_maker(seed: int) -> Callable[[int], str]:
    """``voucher index -> 8-character code suffix``: a bijection on 40 bits, so no two
    vouchers share a suffix (hence codes stay unique per project whatever the prefix)."""
    salt = _salt(seed, "codes") & _MASK40

    def code(index: int) -> str:
        value = (index * 0x9E3779B97F + salt) & _MASK40  # odd multiplier: invertible
        value ^= value >> 19
        value = (value * 0xD6E8FEB867) & _MASK40
        value ^= value >> 21
        return "".join(_CODE_ALPHABET[(value >> shift) & 31] for shift in range(35, -1, -5))

    return code


@functools.cache
def _day_text(day: int) -> str:
    return (EPOCH + timedelta(days=day)).date().isoformat()


def at(offset_ms: int) -> str:
    """The instant ``EPOCH + offset_ms`` as timestamptz text. Formatting it here costs less
    than adapting a ``datetime`` per value, and COPY parses it the same way."""
    day, rest = divmod(offset_ms, DAY_MS)
    second, milli = divmod(rest, 1000)
    minute, second = divmod(second, 60)
    hour, minute = divmod(minute, 60)
    return f"{_day_text(day)} {hour:02d}:{minute:02d}:{second:02d}.{milli:03d}+00"


def token_for(seed: int, key_index: int) -> str:
    """The clear token of the seed's key number ``key_index``; only its SHA-256 is stored."""
    return "sk_" + hashlib.sha256(f"loyalty-seed:{seed}:token:{key_index}".encode()).hexdigest()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CampaignFacts:
    """A campaign row and what its vouchers inherit from it."""

    id: str
    project: int
    kind: int  # index into CAMPAIGN_TYPES and VOUCHER_TYPES alike
    name: str
    code_prefix: str
    active: bool
    start_date: str | None
    expiration_date: str | None
    created_ms: int
    updated_ms: int
    discount: str | None
    gift_amount: int | None
    redemption_quantity: int | None
    metadata: str


@dataclass(frozen=True, slots=True)
class VoucherFacts:
    """Per voucher index, what its redemptions depend on (compact: a million vouchers ~ 25 MB)."""

    project: array[int]
    kind: bytearray
    holder: array[int]  # customer index, -1 when nobody holds it
    created_ms: array[int]


# Vouchers outside any campaign: (code prefix, discount or gift amount) per kind.
_STANDALONE_PREFIXES = ("PROMO", "GC", "CARD")
_STANDALONE_DISCOUNTS = (
    '{"type": "AMOUNT", "amount_off": 500}',
    '{"type": "PERCENT", "percent_off": 10}',
    '{"type": "UNIT", "unit_off": 1, "unit_type": "prod_free_shipping"}',
)
_GIFT_AMOUNTS = (2_500, 5_000, 10_000, 20_000)
# Chance that a voucher of each kind has a holder: loyalty cards almost always do.
_HOLDER_CHANCE = (0.25, 0.35, 0.9)
# Customers, campaigns and segments appear after their project's first month.
_START_MS = 30 * DAY_MS


class SeedRows:
    """Row streams of one plan. Call them in any order: a stream that needs facts of an
    earlier table (redemptions need their vouchers) computes them when missing."""

    def __init__(self, plan: SeedPlan) -> None:
        self.plan = plan
        seed = plan.seed
        self.project_id = id_maker(seed, "proj_", "projects")
        self.api_key_id = id_maker(seed, "app_", "api_keys")
        self.customer_id = id_maker(seed, "cust_", "customers")
        self.campaign_id = id_maker(seed, "camp_", "campaigns")
        self.voucher_id = id_maker(seed, "v_", "vouchers")
        self.redemption_id = id_maker(seed, "r_", "redemptions")
        self.segment_id = id_maker(seed, "seg_", "segments")
        self.voucher_code = code_maker(seed)
        self.project_ids = [self.project_id(p) for p in range(plan.projects)]
        self.customer_ranges = split_evenly(plan.customers, plan.projects)
        self.campaign_ranges = split_evenly(plan.campaigns, plan.projects)
        self.voucher_ranges = split_evenly(plan.vouchers, plan.projects)
        self.segment_ranges = split_evenly(plan.segments, plan.projects)
        self._campaigns: list[CampaignFacts] | None = None
        self._vouchers: VoucherFacts | None = None

    def rows(self, table: str) -> Iterator[Row]:
        streams: dict[str, Callable[[], Iterator[Row]]] = {
            "projects": self.projects,
            "api_keys": self.api_keys,
            "customers": self.customers,
            "campaigns": self.campaigns,
            "vouchers": self.vouchers,
            "redemptions": self.redemptions,
            "segments": self.segments,
            "segment_members": self.segment_members,
        }
        return streams[table]()

    def expected_rows(self, table: str) -> int | None:
        """Rows a table will get; None where only generation tells (segment members)."""
        plan = self.plan
        if table == "api_keys":
            return plan.projects * plan.keys
        if table == "segment_members":
            return None
        count: int = getattr(plan, table)
        return count

    def demo_key(self) -> tuple[str, str] | None:
        """(app id, clear token) of the first key of the first project, never revoked."""
        if self.plan.projects == 0 or self.plan.keys == 0:
            return None
        return self.api_key_id(0), token_for(self.plan.seed, 0)

    def _rng(self, table: str) -> random.Random:
        return random.Random(f"loyalty-seed:{self.plan.seed}:{table}")

    def projects(self) -> Iterator[Row]:
        rng = self._rng("projects")
        for p, project_id in enumerate(self.project_ids):
            name = PROJECT_NAMES[p % len(PROJECT_NAMES)]
            if p >= len(PROJECT_NAMES):
                name = f"{name} {p // len(PROJECT_NAMES) + 1}"
            yield project_id, name, at(rng.randrange(_START_MS))

    def api_keys(self) -> Iterator[Row]:
        rng = self._rng("api_keys")
        keys = self.plan.keys
        for p, project_id in enumerate(self.project_ids):
            for k in range(keys):
                index = p * keys + k
                created = rng.randrange(_START_MS)
                # The first key of a project keeps the service default and is never revoked.
                limit = None if k == 0 else rng.choice((None, 60, 600, 6_000))
                revoked = None
                if k > 0 and rng.random() < 0.2:
                    revoked = at(created + rng.randrange(1, 90 * DAY_MS))
                digest = token_sha256(token_for(self.plan.seed, index))
                yield self.api_key_id(index), project_id, digest, limit, at(created), revoked

    def customers(self) -> Iterator[Row]:
        rng = self._rng("customers")
        r = rng.random
        for p, block in enumerate(self.customer_ranges):
            project_id = self.project_ids[p]
            for i in block:
                first, first_ascii = FIRST_NAMES[int(r() * len(FIRST_NAMES))]
                last, last_ascii = LAST_NAMES[int(r() * len(LAST_NAMES))]
                city, state, country, postal, dial = CITIES[int(r() * len(CITIES))]
                created = _START_MS + int(r() * (YEAR_MS - _START_MS))
                updated = created if r() < 0.5 else created + int(r() * 60 * DAY_MS)
                source_id = f"crm-{i + 1:08d}" if r() < 0.92 else None
                name = f"{first} {last}" if r() < 0.97 else None
                email = None
                if r() < 0.9:
                    domain = DOMAINS[int(r() * len(DOMAINS))]
                    email = f"{first_ascii}.{last_ascii}{i}@{domain}"
                    if r() < 0.05:  # written by hand: e-mail lookups ignore case
                        email = f"{first_ascii.title()}.{last_ascii.title()}{i}@{domain}"
                phone = f"{dial} {1_000_000 + int(r() * 9_000_000)}" if r() < 0.7 else None
                address = None
                if r() < 0.8:
                    address = json.dumps(
                        {
                            "city": city,
                            "state": state,
                            "country": country,
                            "line_1": f"{1 + int(r() * 998)} {STREETS[int(r() * len(STREETS))]}",
                            "line_2": f"Apt {1 + int(r() * 60)}" if r() < 0.3 else None,
                            "postal_code": f"{postal}{int(r() * 1000):03d}",
                        },
                        ensure_ascii=False,
                    )
                metadata: dict[str, Any] = {"tier": rng.choices(TIERS, TIER_WEIGHTS)[0]}
                if r() < 0.9:
                    metadata["age"] = 18 + int(r() * 63)
                metadata["vip"] = r() < 0.1
                metadata["signup_date"] = _day_text(created // DAY_MS - int(r() * 900))
                yield (
                    self.customer_id(i),
                    project_id,
                    source_id,
                    name,
                    email,
                    phone,
                    address,
                    json.dumps(metadata),
                    at(created),
                    at(updated),
                )

    def campaign_facts(self) -> list[CampaignFacts]:
        if self._campaigns is None:
            self._campaigns = self._make_campaign_facts()
        return self._campaigns

    def _make_campaign_facts(self) -> list[CampaignFacts]:
        rng = self._rng("campaigns")
        facts = []
        for p, block in enumerate(self.campaign_ranges):
            for i in block:
                position = i - block.start
                # A project's first three campaigns cover the three types.
                kind = position if position < 3 else rng.choices((0, 1, 2), (2, 1, 1))[0]
                theme, prefix = rng.choice(CAMPAIGN_THEMES[CAMPAIGN_TYPES[kind]])
                created = _START_MS + rng.randrange(YEAR_MS - _START_MS)
                updated = created if rng.random() < 0.5 else created + rng.randrange(30 * DAY_MS)
                start = created + rng.randrange(14 * DAY_MS) if rng.random() < 0.7 else None
                expiration = None
                if rng.random() < 0.6:
                    expiration = (start or created) + rng.randrange(30 * DAY_MS, YEAR_MS)
                facts.append(
                    CampaignFacts(
                        id=self.campaign_id(i),
                        project=p,
                        kind=kind,
                        name=f"{theme} {EPOCH.year + created // YEAR_MS}",
                        code_prefix=prefix,
                        active=rng.random() < 0.85,
                        start_date=None if start is None else at(start),
                        expiration_date=None if expiration is None else at(expiration),
                        created_ms=created,
                        updated_ms=updated,
                        discount=_campaign_discount(rng) if kind == 0 else None,
                        gift_amount=rng.choice(_GIFT_AMOUNTS) if kind == 1 else None,
                        redemption_quantity=rng.choice((None, None, 1, 5, 100))
                        if kind == 0
                        else None,
                        metadata=json.dumps(
                            {
                                "channel": rng.choice(CHANNELS),
                                "budget": rng.randrange(10, 1_000) * 10_000,
                                "region": rng.choice(("EU", "NA", "LATAM", "GLOBAL")),
                            }
                        ),
                    )
                )
        return facts

    def campaigns(self) -> Iterator[Row]:
        for c in self.campaign_facts():
            yield (
                c.id,
                self.project_ids[c.project],
                c.name,
                CAMPAIGN_TYPES[c.kind],
                c.active,
                c.start_date,
                c.expiration_date,
                c.metadata,
                at(c.created_ms),
                at(c.updated_ms),
            )

    def voucher_facts(self) -> VoucherFacts:
        if self._vouchers is None:
            for _ in self.vouchers():
                pass
        assert self._vouchers is not None
        return self._vouchers

    def vouchers(self) -> Iterator[Row]:
        rng = self._rng("vouchers")
        r = rng.random
        campaigns = self.campaign_facts()
        count = self.plan.vouchers
        facts = VoucherFacts(
            project=array("l", [0]) * count,
            kind=bytearray(count),
            holder=array("q", [-1]) * count,
            created_ms=array("q", [0]) * count,
        )
        for p, block in enumerate(self.voucher_ranges):
            project_id = self.project_ids[p]
            own_campaigns, own_customers = self.campaign_ranges[p], self.customer_ranges[p]
            for i in block:
                campaign = None
                if own_campaigns and r() < 0.92:
                    campaign = campaigns[own_campaigns[int(r() * len(own_campaigns))]]
                    kind = campaign.kind
                    created = campaign.created_ms + int(r() * 60 * DAY_MS)
                    active = r() < (0.95 if campaign.active else 0.1)
                else:
                    kind = int(r() * 3)
                    created = _START_MS + int(r() * (YEAR_MS - _START_MS))
                    active = r() < 0.95
                prefix = campaign.code_prefix if campaign else _STANDALONE_PREFIXES[kind]
                discount = gift_amount = gift_balance = points = balance = quantity = None
                if kind == 0:
                    if campaign:
                        discount, quantity = campaign.discount, campaign.redemption_quantity
                    else:
                        discount = _STANDALONE_DISCOUNTS[int(r() * 3)]
                        quantity = 1
                    redeemed = int(r() * (quantity + 1)) if quantity else int(r() * r() * 20)
                elif kind == 1:
                    gift_amount = (
                        campaign.gift_amount
                        if campaign
                        else _GIFT_AMOUNTS[int(r() * len(_GIFT_AMOUNTS))]
                    )
                    assert gift_amount is not None
                    spent = r()
                    gift_balance = (
                        gift_amount
                        if spent < 0.4
                        else 0
                        if spent < 0.55
                        else int(r() * gift_amount)
                    )
                    redeemed = 0 if gift_balance == gift_amount else 1 + int(r() * 5)
                else:
                    points = int(r() * 20_000)
                    balance = int(r() * (points + 1))
                    redeemed = int(r() * 10)
                holder = -1
                if own_customers and r() < _HOLDER_CHANCE[kind]:
                    holder = own_customers[int(r() * len(own_customers))]
                created_at = at(created)
                updated_at = created_at if r() < 0.6 else at(created + int(r() * 30 * DAY_MS))
                metadata = "{}"
                if r() < 0.6:
                    printed = ', "printed": true' if r() < 0.1 else ""
                    metadata = (
                        f'{{"batch": {1 + int(r() * 40)}, '
                        f'"channel": "{CHANNELS[int(r() * len(CHANNELS))]}"{printed}}}'
                    )
                facts.project[i], facts.kind[i] = p, kind
                facts.holder[i], facts.created_ms[i] = holder, created
                yield (
                    self.voucher_id(i),
                    project_id,
                    f"{prefix}-{self.voucher_code(i)}",
                    campaign.id if campaign else None,
                    VOUCHER_TYPES[kind],
                    discount,
                    gift_amount,
                    gift_balance,
                    points,
                    balance,
                    active,
                    campaign.start_date if campaign else None,
                    campaign.expiration_date if campaign else None,
                    quantity,
                    redeemed,
                    self.customer_id(holder) if holder >= 0 else None,
                    metadata,
                    created_at,
                    updated_at,
                )
        self._vouchers = facts

    def redemptions(self) -> Iterator[Row]:
        facts = self.voucher_facts()
        rng = self._rng("redemptions")
        r = rng.random
        vouchers = self.plan.vouchers
        for n in range(self.plan.redemptions):
            # Redemptions follow vouchers, so projects get them in proportion to their vouchers.
            v = int(r() * vouchers)
            p, kind, holder = facts.project[v], facts.kind[v], facts.holder[v]
            own_customers = self.customer_ranges[p]
            customer = None
            if holder >= 0 and r() < 0.9:
                customer = self.customer_id(holder)
            elif own_customers and r() < 0.6:
                customer = self.customer_id(own_customers[int(r() * len(own_customers))])
            result = "SUCCESS" if r() < 0.88 else "FAILURE"
            amount = 100 * (1 + int(r() * 50)) if kind == 1 else None
            points = 10 * (1 + int(r() * 50)) if kind == 2 else None
            created = facts.created_ms[v] + int(r() * 90 * DAY_MS)
            yield (
                self.redemption_id(n),
                self.project_ids[p],
                self.voucher_id(v),
                customer,
                amount,
                points,
                result,
                at(created),
            )

    def segments(self) -> Iterator[Row]:
        rng = self._rng("segments")
        for p, block in enumerate(self.segment_ranges):
            for i in block:
                position = i - block.start
                created = _START_MS + rng.randrange(YEAR_MS - _START_MS)
                updated = created if rng.random() < 0.5 else created + rng.randrange(30 * DAY_MS)
                if _is_static(position):
                    name = STATIC_SEGMENT_NAMES[(position // 2) % len(STATIC_SEGMENT_NAMES)]
                    kind, filter_json = "static", None
                else:
                    name, segment_filter = auto_segment(rng)
                    kind, filter_json = "auto-update", json.dumps(segment_filter)
                yield (
                    self.segment_id(i),
                    self.project_ids[p],
                    name,
                    kind,
                    filter_json,
                    at(created),
                    at(updated),
                )

    def segment_members(self) -> Iterator[Row]:
        rng = self._rng("segment_members")
        for p, block in enumerate(self.segment_ranges):
            own_customers = self.customer_ranges[p]
            # Up to 5% of the project's customers, at least a handful in a small project.
            most = min(len(own_customers), max(20, len(own_customers) // 20))
            for i in block:
                if not _is_static(i - block.start):
                    continue
                members = rng.sample(own_customers, rng.randint(0, most))
                segment_id = self.segment_id(i)
                for customer in sorted(members):
                    yield segment_id, self.customer_id(customer)


def _is_static(position_in_project: int) -> bool:
    """Segments alternate static and auto-update within each project."""
    return position_in_project % 2 == 0


def _campaign_discount(rng: random.Random) -> str:
    """The discount every voucher of a discount campaign carries (docs/api.md §1 keys)."""
    kind = rng.choice(("AMOUNT", "PERCENT", "UNIT"))
    discount: dict[str, Any] = {"type": kind}
    if kind == "AMOUNT":
        discount["amount_off"] = rng.choice((500, 1_000, 1_500, 2_000, 2_500))
    elif kind == "PERCENT":
        discount["percent_off"] = rng.choice((5, 10, 15, 20, 25, 30, 50))
        if rng.random() < 0.6:
            discount["amount_limit"] = rng.choice((2_000, 5_000, 10_000))
    else:
        discount["unit_off"] = rng.choice((1, 2))
        discount["unit_type"] = rng.choice(UNIT_TYPES)
    return json.dumps(discount)
