"""A labelled PII corpus for measuring detectors: agent-style snippets and tricky negatives.

Generated deterministically (seeded): values in the many shapes people write them
(cards with and without separators, IBANs grouped or compact, phones in national and
international forms), inside the kind of text agents send, plus snippets that hold
nothing but look as if they might: order numbers, versions, timestamps, amounts, ids.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from protege.pii.detectors import PiiType, iban_ok, luhn_ok


@dataclass(frozen=True)
class Snippet:
    text: str
    entities: list[tuple[PiiType, str]] = field(default_factory=list)
    key: str | None = None  # the text is the value of this tool-call argument


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice(
        [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)]
    )
    digits = _luhn_complete(prefix, length, rng)
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return digits
    groups = (
        [digits[:4], digits[4:10], digits[10:]]
        if length == 15
        else [digits[i : i + 4] for i in range(0, 16, 4)]
    )
    return (" " if style == "space" else "-").join(groups)


def _iban(rng: random.Random) -> str:
    country, bban_length = rng.choice(
        [("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20), ("IT", 23)]
    )
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban += "".join(rng.choice(string.digits) for _ in range(bban_length - 4))
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(22))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(bban_length))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    assert iban_ok(compact)
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _phone(rng: random.Random) -> str:
    def n(k: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(k))

    area = str(rng.randint(201, 989))
    return rng.choice(
        [
            f"({area}) {n(3)}-{n(4)}",
            f"{area}-{n(3)}-{n(4)}",
            f"{area}.{n(3)}.{n(4)}",
            f"+1 {area}-{n(3)}-{n(4)}",
            f"+44 20 {n(4)} {n(4)}",
            f"+49 30 {n(6)}",
            f"+33 1 {n(2)} {n(2)} {n(2)} {n(2)}",
            f"+91 {rng.randint(70000, 99999)} {n(5)}",
            f"+81 3-{n(4)}-{n(4)}",
            f"+61 2 {n(4)} {n(4)}",
        ]
    )


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return rng.choice(
        ["2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a", "2606:4700:4700::1111", "::ffff:c000:280"]
    )


def _token(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def _api_key(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    return rng.choice(
        [
            "sk-proj-" + _token(rng, alnum + "_-", 40),
            "sk-" + _token(rng, alnum, 48),
            "AKIA" + _token(rng, string.ascii_uppercase + string.digits, 16),
            "ghp_" + _token(rng, alnum, 36),
            "xoxb-" + _token(rng, string.digits, 12) + "-" + _token(rng, alnum, 24),
            "AIza" + _token(rng, alnum + "_-", 35),
            "sk_live_" + _token(rng, alnum, 24),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI" + _token(rng, alnum, 20) + "." + _token(rng, alnum + "_-", 43),
            "pgk-" + _token(rng, alnum + "_-", 43),
        ]
    )


FIRST = [
    "John",
    "Priya",
    "Carlos",
    "Emily",
    "Wei",
    "Fatima",
    "Lars",
    "Sophia",
    "Michael",
    "Aisha",
    "Hans",
    "Julia",
]
LAST = [
    "Smith",
    "Patel",
    "Mendez",
    "Clark",
    "Zhang",
    "Haddad",
    "Nilsson",
    "Rossi",
    "O'Brien",
    "Okafor",
    "Becker",
]
DOMAINS = ["example.com", "acme-corp.io", "mail.contoso.org", "uni.ac.uk", "shop.example.de"]


def _email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower().replace("'", "")
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}+orders", f"{last}_{rng.randint(1, 99)}"]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


POSITIVE_TEMPLATES: dict[PiiType, list[str]] = {
    PiiType.EMAIL: [
        "Please send the invoice to {v} by Friday.",
        "Customer email: {v}",
        '{{"to": "{v}", "subject": "Refund"}}',
        "cc {v} and the support queue",
    ],
    PiiType.PHONE: [
        "Call me back at {v} after 5pm.",
        "phone: {v}",
        "The store's number is {v}, ask for returns.",
        '{{"contact_phone": "{v}"}}',
    ],
    PiiType.CREDIT_CARD: [
        "Charge card {v} exp 09/27 for the order.",
        "My card number is {v}",
        '{{"payment": {{"card": "{v}", "amount": 42.50}}}}',
        "Please refund to {v}.",
    ],
    PiiType.US_SSN: [
        "SSN: {v}",
        "Applicant social security number {v}, DOB 1988-02-03.",
        "Verify identity with {v} before approving.",
    ],
    PiiType.IBAN: [
        "Wire the deposit to IBAN {v} by Monday.",
        "Account: {v}",
        '{{"iban": "{v}", "bic": "DEUTDEFF"}}',
    ],
    PiiType.IP_ADDRESS: [
        "Login attempt from {v} was blocked.",
        "ssh admin@{v} -p 22",
        "The API server listens on {v}:8443.",
        '{{"client_ip": "{v}"}}',
    ],
    PiiType.API_KEY: [
        "Use the key {v} for the staging project.",
        "export API_KEY={v}",
        "Authorization: Bearer {v}",
        '{{"headers": {{"x-api-key": "{v}"}}}}',
    ],
    PiiType.PERSON: [
        "Dear Mr. {v}, your order has shipped.",
        "My name is {v} and I need help with a return.",
        "Name: {v}\nOrder: 18823",
        "Thanks,\n{v}",
        "Please ask Dr. {v} to approve the claim.",
        "{v} called about the late delivery.",
    ],
}
SPECIAL_POSITIVES = [
    Snippet(
        "Connect with postgres://admin:S3cr3t!pw@db.internal:5432/orders and run the report.",
        [(PiiType.URL_CREDENTIALS, "admin:S3cr3t!pw")],
    ),
    Snippet(
        "amqp://svc_user:hunter2hunter2@mq.local/vhost",
        [(PiiType.URL_CREDENTIALS, "svc_user:hunter2hunter2")],
    ),
    Snippet(
        "git clone https://deploy:ghs0xABCDEF1234@git.example.com/repo.git",
        [(PiiType.URL_CREDENTIALS, "deploy:ghs0xABCDEF1234")],
    ),
    Snippet(
        "redis://default:pa55w0rd-redis@cache:6379/0", [(PiiType.URL_CREDENTIALS, "default:pa55w0rd-redis")]
    ),
    Snippet(
        "mongodb://root:r00t-Pass@mongo-0.mongo:27017/admin?replicaSet=rs0",
        [(PiiType.URL_CREDENTIALS, "root:r00t-Pass")],
    ),
    Snippet(
        "Here is the key:\n-----BEGIN RSA PRIVATE KEY-----\n"
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
        "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
        "-----END RSA PRIVATE KEY-----\nkeep it safe",
        [(PiiType.PRIVATE_KEY, "-----BEGIN RSA PRIVATE KEY-----")],
    ),
    Snippet(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "-----END OPENSSH PRIVATE KEY-----",
        [(PiiType.PRIVATE_KEY, "-----BEGIN OPENSSH PRIVATE KEY-----")],
    ),
    Snippet(
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
        "-----END PRIVATE KEY-----",
        [(PiiType.PRIVATE_KEY, "-----BEGIN PRIVATE KEY-----")],
    ),
    Snippet("password: Tr0ub4dor&3xyz", [(PiiType.API_KEY, "Tr0ub4dor&3xyz")]),
    Snippet('{"db_password": "x9!Lk2#pQ7w"}', [(PiiType.API_KEY, "x9!Lk2#pQ7w")]),
    Snippet("SSN 219098765 on file", [(PiiType.US_SSN, "219098765")]),
    Snippet(
        "Ship to Priya Patel, 221B Baker Street; call +44 20 7946 0958 or email priya.patel@example.com.",
        [
            (PiiType.PERSON, "Priya Patel"),
            (PiiType.PHONE, "+44 20 7946 0958"),
            (PiiType.EMAIL, "priya.patel@example.com"),
        ],
    ),
    Snippet(
        "Card 4111 1111 1111 1111 was declined for john.smith@acme-corp.io from 203.0.113.77.",
        [
            (PiiType.CREDIT_CARD, "4111 1111 1111 1111"),
            (PiiType.EMAIL, "john.smith@acme-corp.io"),
            (PiiType.IP_ADDRESS, "203.0.113.77"),
        ],
    ),
]

NEGATIVES = [
    "Order #4829103847 shipped on 2024-05-01 12:30:45.",
    "Upgrade to version 2.10.4.1 before Friday.",
    "Running Python 3.11.7 on release 10.0.19045.1",
    "The build v1.2.3 fixed the crash; see 1.4.0 notes.",
    "Timestamp 2024-05-01T12:30:45Z, latency 12:30:45.123",
    "Unix time 1714566645 is when the job started.",
    "Total due: $1,234.56 (tax 8.25%).",
    "Tracking number 1Z999AA10123456784 via UPS.",
    "Invoice INV-2024-000123 covers SKU-88-1234 and SKU-12-9981.",
    "Deliver to ZIP 94107-1234, suite 500.",
    "ISBN 978-3-16-148410-0 is out of stock.",
    "Commit a3f5c9e1b2d4f6a8c0e2 broke the pipeline.",
    "SELECT id, total FROM orders WHERE placed_at > '2024-01-01' LIMIT 100;",
    "The meeting in New York moved to Monday Morning.",
    "Ratio 3:2:1 and score 10:30:20 at the match.",
    "Build 20240501.1530 passed 1523 of 1530 tests.",
    "Use port 8443 and timeout 30000 ms.",
    "Reference number 555-0100-22 is not a phone.",
    "Matrix dims 1024 x 768 x 3, seed 42.",
    "Coordinates 37.7749, -122.4194 (San Francisco).",
    "The api key must be rotated every 90 days.",
    "Email support or call the help desk.",
    "Price list: 12.99, 24.50, 199.00 EUR.",
    "Flight UA 1234 departs 08:45 from gate B12.",
    "Customer tier: Gold; region: Europe West.",
    "Intent: cancel_order. Confidence 0.93.",
    "Table orders has columns id, customer_id, total, placed_at.",
    "Error 500 at /v1/chat/completions after 3.2 s",
    "Machine Learning Engineer role in Berlin.",
    "Chapter 12.3.4 explains the theorem.",
    "Flash firmware 4.3.2.1 onto the router first.",
    "Section 1.2.3.4 of the contract covers refunds.",
    "Dial 1-800-FLOWERS for same-day delivery.",
    "The SKU 4000 1234 5678 9010 is discontinued.",
    "Quantity 1 000 000 units, batch 2024 05 01.",
    "Grace period ends on the 30th; Will call tomorrow.",
    "Account balance 12345678901234 cents after the update.",
    "Model gpt-4o-mini-2024-07-18 answered in 812 ms.",
]


def build_corpus(seed: int = 20261130) -> list[Snippet]:
    rng = random.Random(seed)
    makers = {
        PiiType.EMAIL: _email,
        PiiType.PHONE: _phone,
        PiiType.CREDIT_CARD: _card,
        PiiType.US_SSN: _ssn,
        PiiType.IBAN: _iban,
        PiiType.IP_ADDRESS: _ip,
        PiiType.API_KEY: _api_key,
        PiiType.PERSON: _person,
    }
    corpus = []
    for kind, templates in POSITIVE_TEMPLATES.items():
        for index in range(20):
            value = makers[kind](rng)
            corpus.append(Snippet(templates[index % len(templates)].format(v=value), [(kind, value)]))
    corpus += SPECIAL_POSITIVES
    corpus += [Snippet(text) for text in NEGATIVES]
    for _ in range(20):  # long order numbers that are not valid cards
        number = "".join(rng.choice(string.digits) for _ in range(16))
        if not luhn_ok(number):
            corpus.append(Snippet(f"Your order number is {number}; keep it for returns."))
    return corpus
