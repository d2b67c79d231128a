"""Word lists and templates the seed data is drawn from; plain constants, no logic but the
segment filter templates (docs/api.md §4 shape)."""

from __future__ import annotations

import random
from typing import Any

PROJECT_NAMES = (
    "Acme Coffee",
    "Northwind Outfitters",
    "Bluebird Books",
    "Helios Fitness",
    "Copper Kettle",
    "Urban Sprout Grocers",
    "Polar Petcare",
    "Lumen Cinemas",
)

# (as written, as used in an e-mail address): names with accents and apostrophes on purpose.
FIRST_NAMES = (
    ("Ada", "ada"),
    ("Alan", "alan"),
    ("Grace", "grace"),
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Søren", "soren"),
    ("Łukasz", "lukasz"),
    ("Mia", "mia"),
    ("Noah", "noah"),
    ("Olivia", "olivia"),
    ("Liam", "liam"),
    ("Emma", "emma"),
    ("Chloé", "chloe"),
    ("Mateo", "mateo"),
    ("Aisha", "aisha"),
    ("Yuki", "yuki"),
    ("Priya", "priya"),
    ("Omar", "omar"),
    ("Hannah", "hannah"),
    ("Lucas", "lucas"),
    ("Ingrid", "ingrid"),
    ("Kwame", "kwame"),
    ("Elif", "elif"),
    ("Diego", "diego"),
)
LAST_NAMES = (
    ("Smith", "smith"),
    ("Johnson", "johnson"),
    ("García", "garcia"),
    ("Müller", "muller"),
    ("Kowalski", "kowalski"),
    ("O'Brien", "obrien"),
    ("Nguyen", "nguyen"),
    ("Rossi", "rossi"),
    ("Dubois", "dubois"),
    ("Tanaka", "tanaka"),
    ("Silva", "silva"),
    ("Novak", "novak"),
    ("Jensen", "jensen"),
    ("Patel", "patel"),
    ("Cohen", "cohen"),
    ("Brown", "brown"),
    ("Okafor", "okafor"),
    ("Öztürk", "ozturk"),
    ("van Dijk", "vandijk"),
    ("Lee", "lee"),
)
DOMAINS = ("example.com", "example.org", "mail.example.net", "shop.example")

# (city, state, country, postal code prefix, phone prefix)
CITIES = (
    ("Portland", "OR", "US", "97", "+1 503"),
    ("Austin", "TX", "US", "78", "+1 512"),
    ("Brooklyn", "NY", "US", "11", "+1 718"),
    ("Toronto", "ON", "CA", "M5V ", "+1 416"),
    ("Berlin", "BE", "DE", "10", "+49 30"),
    ("Munich", "BY", "DE", "80", "+49 89"),
    ("Warsaw", "MZ", "PL", "00-", "+48 22"),
    ("Lyon", "ARA", "FR", "69", "+33 4"),
    ("Madrid", "MD", "ES", "28", "+34 91"),
    ("Milan", "MI", "IT", "20", "+39 02"),
    ("London", "ENG", "GB", "EC1A ", "+44 20"),
    ("São Paulo", "SP", "BR", "01310-", "+55 11"),
)
STREETS = (
    "Main Street",
    "Oak Avenue",
    "Market Street",
    "Hauptstraße",
    "Rue de la Paix",
    "Calle Mayor",
    "Via Roma",
    "King Street",
    "Ulica Długa",
)

TIERS = ("bronze", "silver", "gold", "platinum")
TIER_WEIGHTS = (50, 30, 15, 5)

# campaign type -> (theme, voucher code prefix)
CAMPAIGN_THEMES = {
    "DISCOUNT_COUPONS": (
        ("Summer Sale", "SUMMER"),
        ("Black Friday", "BF"),
        ("Welcome Offer", "WELCOME"),
        ("Spring Clearance", "SPRING"),
        ("Weekend Flash Sale", "FLASH"),
        ("Back to School", "SCHOOL"),
    ),
    "GIFT_VOUCHERS": (
        ("Holiday Gift Cards", "GIFT"),
        ("Birthday Gift", "BDAY"),
        ("Corporate Gifts", "CORP"),
        ("Store Credit", "CREDIT"),
    ),
    "LOYALTY_PROGRAM": (
        ("Coffee Club", "CLUB"),
        ("Rewards Plus", "PLUS"),
        ("Frequent Visitor", "FREQ"),
        ("VIP Points", "VIP"),
    ),
}
CHANNELS = ("email", "sms", "in_store", "web", "partner")
UNIT_TYPES = ("sku_espresso", "sku_tote_bag", "prod_free_shipping")

STATIC_SEGMENT_NAMES = (
    "Newsletter subscribers",
    "Beta testers",
    "Store staff",
    "Event attendees",
    "Survey respondents",
    "Wholesale accounts",
)


def auto_segment(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The name and filter of an auto-update segment, from a seeded choice of templates."""
    template = rng.randrange(6)
    if template == 0:
        tiers = sorted(rng.sample(TIERS[1:], 2), key=TIERS.index)
        return f"Tier {' or '.join(tiers)}", {
            "junction": "and",
            "metadata.tier": {"conditions": {"$in": tiers}},
        }
    if template == 1:
        countries = sorted(rng.sample(sorted({city[2] for city in CITIES}), 2))
        return f"VIPs in {' and '.join(countries)}", {
            "junction": "and",
            "metadata.vip": {"conditions": {"$is": [True]}},
            "address.country": {"conditions": {"$in": countries}},
        }
    if template == 2:
        redeemed, points = rng.randint(1, 5), rng.choice((500, 1000, 5000))
        return "Active redeemers", {
            "junction": "or",
            "summary.redemptions.total_succeeded": {"conditions": {"$more_than_equal": [redeemed]}},
            "loyalty.points": {"conditions": {"$more_than": [points]}},
        }
    if template == 3:
        age = rng.randrange(20, 60, 5)
        return f"Age {age} to {age + 14}, gold or example.com", {
            "junction": "and",
            "metadata.age": {"conditions": {"$more_than_equal": [age], "$less_than": [age + 15]}},
            "filters": [
                {
                    "junction": "or",
                    "metadata.tier": {"conditions": {"$is": ["gold"]}},
                    "email": {"conditions": {"$ends_with": ["@example.com"]}},
                }
            ],
        }
    if template == 4:
        month = rng.randint(2, 12)
        return f"Joined after 2024-{month:02d}", {
            "junction": "and",
            "created_at": {"conditions": {"$after": [f"2024-{month:02d}-01T00:00:00Z"]}},
        }
    letter = rng.choice("ACEGJLMNOPS")
    return f"Names starting with {letter}, outside Berlin", {
        "junction": "and",
        "name": {"conditions": {"$starts_with": [letter]}},
        "address.city": {"conditions": {"$is_not": ["Berlin"]}},
        "metadata.signup_date": {"conditions": {"$before": ["2024-06-01"]}},
    }
