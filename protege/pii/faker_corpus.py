"""A labelled PII corpus whose values come from Faker, not from the team that wrote the detectors.

Faker (a dev and bench dependency, ``pip install faker``) produces every value in the forms
its locales write them: names, postal addresses and phone numbers of 14 locales, national
numbers with their check digits (Faker computes them its own way: the detectors' checks
were written from the issuers' definitions, and agree), passport numbers, IBANs, cards,
IP addresses, dates of birth. Where Faker has no generator (provider tokens, JWTs, private
keys, URL credentials, UK National Insurance numbers, for which Faker deliberately emits
the reserved "ZZ … T" form, which is not a NINO), the values are drawn with Faker's random
source in the issuer's published format. The snippets are the texts a support agent sees:
chat turns, ticket notes, signatures, and tool-call argument values under their key. Hard
negatives (order ids, SKUs, versions, hashes, UUIDs, ISBNs, EANs, timestamps, amounts,
tracking numbers, dates that are not birth dates) hold nothing to redact.

Nothing here is read by the detectors, and the detectors reference none of Faker's lists.
"""

from __future__ import annotations

import base64
import json
import string
import urllib.parse
from collections.abc import Callable
from typing import Any

from protege.pii.corpus import Snippet
from protege.pii.detectors import PiiType

LOCALES = [
    "en_US", "en_GB", "en_IE", "de_DE", "de_AT", "fr_FR", "es_ES", "it_IT",
    "nl_NL", "nl_BE", "pl_PL", "sv_SE", "fi_FI", "pt_PT",
]  # fmt: skip

Maker = Callable[[Any], str]  # a Faker generator → a value


def _faker(seed: int) -> Any:
    try:
        from faker import Faker
    except ImportError:
        raise RuntimeError("the Faker corpus needs `pip install faker` (a dev dependency)") from None
    fake = Faker(LOCALES)
    fake.seed_instance(seed)
    return fake


def _loc(fake: Any, locales: list[str] | None = None) -> Any:
    return fake[fake.random_element(locales or LOCALES)]


# --- values --------------------------------------------------------------------------------
def person(fake: Any) -> str:
    local = _loc(fake)
    return f"{local.first_name()} {local.last_name()}"


def address(fake: Any) -> str:
    # Locales whose Faker addresses are their country's (en_IE and de_AT print US ones).
    local = _loc(
        fake, ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "sv_SE", "pt_PT"]
    )
    value: str = local.address()
    if "Box" in value or "PSC" in value or "USNS" in value or "USNV" in value or "USS " in value:
        value = local.address()  # fewer US military mail addresses: one in a hundred, not one in ten
    return value.replace("\n", fake.random_element([", ", "\n", ", "]))


def date_of_birth(fake: Any) -> str:
    born = fake.date_of_birth(minimum_age=16, maximum_age=95)
    form = fake.random_element(
        ["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%d %B %Y", "%d %b %Y", "%b %d %Y"]
    )
    return str(born.strftime(form))


def passport(fake: Any) -> str:
    return str(_loc(fake).passport_number())


def _nino(fake: Any) -> str:
    first = fake.random_element("ABCEGHJKLMNOPRSTWXYZ")
    second = fake.random_element("ABCEGHJKLMNPRSTWXYZ")
    if first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
        first, second = "A", "B"
    digits = fake.numerify("######")
    suffix = fake.random_element("ABCD")
    if fake.random_int(0, 1):
        return f"{first}{second} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"
    return f"{first}{second}{digits}{suffix}"


# Faker's national numbers, by the name people call them (the cue in the templates).
NATIONAL_IDS: list[tuple[str, Maker]] = [
    ("National Insurance number", _nino),
    ("numéro de sécurité sociale", lambda f: f["fr_FR"].ssn()),
    ("Rentenversicherungsnummer", lambda f: f["de_DE"].rvnr()),
    ("DNI", lambda f: f["es_ES"].nif()),
    ("NIE", lambda f: f["es_ES"].nie()),
    ("codice fiscale", lambda f: f["it_IT"].ssn()),
    ("BSN", lambda f: f["nl_NL"].ssn()),
    ("PESEL", lambda f: f["pl_PL"].ssn()),
    ("personnummer", lambda f: f["sv_SE"].ssn()),
    ("henkilötunnus", lambda f: f["fi_FI"].ssn()),
    ("rijksregisternummer", lambda f: f["nl_BE"].ssn()),
]


def phone(fake: Any) -> str:
    return str(_loc(fake).phone_number())


def email(fake: Any) -> str:
    local = _loc(fake)
    return str(fake.random_element([local.email, local.free_email, local.company_email])())


def card(fake: Any) -> str:
    digits: str = fake["en_US"].credit_card_number(
        fake.random_element(["visa", "mastercard", "amex", "discover", "jcb", "diners", "maestro", "visa13"])
    )
    style = fake.random_int(0, 2)
    if style == 0 or len(digits) not in (15, 16):
        return digits
    groups = (
        [digits[:4], digits[4:10], digits[10:]]
        if len(digits) == 15
        else [digits[i : i + 4] for i in range(0, 16, 4)]
    )
    return (" " if style == 1 else "-").join(groups)


def iban(fake: Any) -> str:
    value: str = _loc(
        fake, ["de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "en_GB", "pl_PL", "fi_FI", "nl_BE"]
    ).iban()
    if fake.random_int(0, 1):
        return " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def ip_address(fake: Any) -> str:
    return str(fake.random_element([fake.ipv4_public, fake.ipv4_private, fake.ipv6])())


def _chars(fake: Any, alphabet: str, length: int) -> str:
    return "".join(fake.random_choices(alphabet, length=length))


ALNUM = string.ascii_letters + string.digits


def _jwt(fake: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    header = part({"alg": fake.random_element(["HS256", "RS256", "ES256"]), "typ": "JWT"})
    payload = part({"sub": fake.uuid4(), "email": fake.email(), "iat": fake.unix_time()})
    return f"{header}.{payload}.{_chars(fake, ALNUM + '-_', 43)}"


# Provider tokens in their published formats (prefix, alphabet, length).
TOKENS: list[tuple[str, Maker]] = [
    ("GitHub", lambda f: f.random_element(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + _chars(f, ALNUM, 36)),
    ("GitHub", lambda f: "github_pat_" + _chars(f, ALNUM, 22) + "_" + _chars(f, ALNUM, 59)),
    ("GitLab", lambda f: "glpat-" + _chars(f, ALNUM + "-_", 20)),
    (
        "Slack",
        lambda f: f"xoxb-{f.numerify('############')}-{f.numerify('#############')}-{_chars(f, ALNUM, 24)}",
    ),
    (
        "Slack",
        lambda f: f"xoxp-{f.numerify('###########')}-{f.numerify('############')}-{_chars(f, ALNUM, 32)}",
    ),
    ("Anthropic", lambda f: "sk-ant-api03-" + _chars(f, ALNUM + "-_", 93) + "AA"),
    ("Google", lambda f: "AIza" + _chars(f, ALNUM + "-_", 35)),
    ("Google", lambda f: "ya29." + _chars(f, ALNUM + "-_", 120)),
    ("OpenAI", lambda f: "sk-proj-" + _chars(f, ALNUM + "-_", 48)),
    ("AWS", lambda f: "AKIA" + _chars(f, string.ascii_uppercase + string.digits, 16)),
    ("Stripe", lambda f: "sk_live_" + _chars(f, ALNUM, 24)),
    ("JWT", _jwt),
]


def token(fake: Any) -> str:
    return str(fake.random_element(TOKENS)[1](fake))


def url_credentials(fake: Any) -> str:
    password = urllib.parse.quote(fake.password(length=12), safe="")
    return f"{fake.user_name()}:{password}"


def private_key(fake: Any) -> str:
    kind = fake.random_element(["RSA ", "EC ", "OPENSSH ", ""])
    body = base64.b64encode(fake.binary(length=96)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{lines}\n-----END {kind}PRIVATE KEY-----"


# --- templates -------------------------------------------------------------------------------
# (template, key): with a key, the value is a tool-call argument value under that key and the
# template is "{v}"; a template without a cue tests detection without one.
TEMPLATES: dict[PiiType, list[tuple[str, str | None]]] = {
    PiiType.PERSON: [
        ("{v} called about the late delivery.", None),
        ("I spoke with {v} yesterday and they confirmed the refund.", None),
        ("Please escalate this to {v} in billing.", None),
        ("Ticket reassigned from {v} after the call.", None),
        ("Can you check whether {v} already paid the invoice?", None),
        ("The package was signed for by {v} at the front desk.", None),
        ("Hi, my name is {v} and my order never arrived.", None),
        ("Thanks for your help,\n{v}", None),
        ("Customer: {v}\nIssue: charged twice", None),
        ("{v}", "customer_name"),
        ("{v}", "recipient"),
        ("{v}", "full_name"),
    ],
    PiiType.ADDRESS: [
        ("Please ship the replacement to {v}.", None),
        ("My new address is {v}", None),
        ("Deliver to:\n{v}\nThanks!", None),
        ("The invoice still shows {v} as the billing address.", None),
        ("I moved last month, it should go to {v} now.", None),
        ("{v}", "shipping_address"),
        ("{v}", "address"),
    ],
    PiiType.DATE_OF_BIRTH: [
        ("DOB: {v}", None),
        ("I was born on {v}, if you need it for verification.", None),
        ("Date of birth {v}, policy holder.", None),
        ("Verified the caller: birthday {v}, postcode matches.", None),
        ("{v}", "date_of_birth"),
        ("{v}", "dob"),
    ],
    PiiType.PASSPORT: [
        ("My passport number is {v}.", None),
        ("Passport: {v}, expires next year.", None),
        ("Upload a scan of passport {v} to finish the check-in.", None),
        ("{v}", "passport_number"),
    ],
    PiiType.NATIONAL_ID: [
        ("My {name} is {v}.", None),
        ("{name}: {v}", None),
        ("The form asks for the {name} ({v}) of the account holder.", None),
        ("{v}", "national_id"),
    ],
    PiiType.US_SSN: [
        ("SSN: {v}", None),
        ("My social security number is {v}.", None),
        ("Verify identity with {v} before approving.", None),
        ("{v}", "ssn"),
    ],
    PiiType.PHONE: [
        ("Call me back at {v} after 5pm.", None),
        ("phone: {v}", None),
        ("You can reach me on {v} during the day.", None),
        ("My mobile number is {v}.", None),
        ("Best,\nSupport desk\nTel. {v}", None),
        ("{v}", "phone"),
        ("{v}", "contact_number"),
    ],
    PiiType.EMAIL: [
        ("Please send the invoice to {v} by Friday.", None),
        ("Customer email: {v}", None),
        ("cc {v} and the support queue", None),
        ("{v}", "to"),
    ],
    PiiType.CREDIT_CARD: [
        ("Charge card {v} for the order.", None),
        ("My card number is {v}", None),
        ("Please refund to {v}.", None),
        ("{v}", "card"),
    ],
    PiiType.IBAN: [
        ("Wire the deposit to IBAN {v} by Monday.", None),
        ("Account: {v}", None),
        ("{v}", "iban"),
    ],
    PiiType.IP_ADDRESS: [
        ("Login attempt from {v} was blocked.", None),
        ("The API server listens on {v} behind the proxy.", None),
        ("{v}", "client_ip"),
    ],
    PiiType.API_KEY: [
        ("Use the key {v} for the staging project.", None),
        ("export TOKEN={v}", None),
        ("Authorization: Bearer {v}", None),
        ("here is my token, it stopped working: {v}", None),
        ("{v}", "api_key"),
    ],
    PiiType.URL_CREDENTIALS: [
        ("Connect with postgres://{v}@db.internal:5432/orders and run the report.", None),
        ("git clone https://{v}@git.example.com/team/repo.git", None),
        ("{v}", None),  # replaced below: a whole URL as an argument value
    ],
    PiiType.PRIVATE_KEY: [
        ("Here is the deploy key:\n{v}\nkeep it safe", None),
        ("{v}", "private_key"),
    ],
}

MAKERS: dict[PiiType, Maker] = {
    PiiType.PERSON: person,
    PiiType.ADDRESS: address,
    PiiType.DATE_OF_BIRTH: date_of_birth,
    PiiType.PASSPORT: passport,
    PiiType.US_SSN: lambda f: f["en_US"].ssn(),
    PiiType.PHONE: phone,
    PiiType.EMAIL: email,
    PiiType.CREDIT_CARD: card,
    PiiType.IBAN: iban,
    PiiType.IP_ADDRESS: ip_address,
    PiiType.API_KEY: token,
    PiiType.URL_CREDENTIALS: url_credentials,
    PiiType.PRIVATE_KEY: private_key,
}


def _positive(fake: Any, kind: PiiType, index: int) -> Snippet:
    template, key = TEMPLATES[kind][index % len(TEMPLATES[kind])]
    name = ""
    if kind is PiiType.NATIONAL_ID:
        name, make = NATIONAL_IDS[index % len(NATIONAL_IDS)]
        value = make(fake)
    else:
        value = MAKERS[kind](fake)
    if kind is PiiType.URL_CREDENTIALS and template == "{v}":
        return Snippet(
            f"{fake.random_element(['https', 'amqp', 'redis', 'mongodb'])}://{value}@{fake.domain_name()}/",
            [(kind, value)],
            key="url",
        )
    return Snippet(template.format(v=value, name=name), [(kind, value)], key=key)


def _number_arguments(fake: Any) -> list[Snippet]:
    """Tool-call argument values that are JSON numbers: phones, SSNs and cards sent as integers."""
    phone_number = str(fake.random_int(2012000000, 9899999999))
    ssn = fake["en_US"].ssn().replace("-", "")
    card_number = fake["en_US"].credit_card_number("visa16")
    return [
        Snippet(phone_number, [(PiiType.PHONE, phone_number)], key="phone"),
        Snippet(ssn, [(PiiType.US_SSN, ssn)], key="ssn"),
        Snippet(card_number, [(PiiType.CREDIT_CARD, card_number)], key="card_number"),
    ]


def _mixed(fake: Any) -> Snippet:
    """A support ticket with several entities at once."""
    name, mail, number, where = person(fake), email(fake), phone(fake), address(fake)
    text = (
        f"New ticket from {name} ({mail}): the parcel for {where} came back. "
        f"Please call {number} to arrange a new delivery."
    )
    return Snippet(
        text,
        [(PiiType.PERSON, name), (PiiType.EMAIL, mail), (PiiType.ADDRESS, where), (PiiType.PHONE, number)],
    )


# Texts an agent sees that hold no PII, with the values most often mistaken for it.
NEGATIVE_TEMPLATES: list[tuple[str, Callable[[Any], dict[str, Any]]]] = [
    ("Order {v} shipped on {d}.", lambda f: {"v": f.numerify("##########"), "d": f.date()}),
    ("Order #{v} is delayed by the carrier.", lambda f: {"v": f.bothify("ORD-########")}),
    ("Your order number is {v}; keep it for returns.", lambda f: {"v": f.numerify("################")}),
    ("SKU {v} is out of stock in {c}.", lambda f: {"v": f.bothify("??-####-??").upper(), "c": f.city()}),
    ("Barcode {v} scanned twice at the register.", lambda f: {"v": f.ean13()}),
    ("Upgrade to version {v} before Friday.", lambda f: {"v": f.numerify("%.#.##")}),
    ("Flash firmware {v} onto the router first.", lambda f: {"v": f.numerify("%.%.#.#")}),
    (
        "Running release {v} in production since {d}.",
        lambda f: {"v": f.numerify("##.#.#####.#"), "d": f.date()},
    ),
    ("Commit {v} broke the pipeline.", lambda f: {"v": f.sha1()[: f.random_int(7, 40)]}),
    ("Checksum {v} matches the upload.", lambda f: {"v": f.sha256()}),
    ("md5 {v}", lambda f: {"v": f.md5()}),
    ("Request id {v} failed with 503.", lambda f: {"v": f.uuid4()}),
    ("ISBN {v} is back in stock.", lambda f: {"v": f.isbn13()}),
    ("The book (ISBN {v}) ships in two days.", lambda f: {"v": f.isbn10()}),
    ("Timestamp {v}, latency {ms} ms", lambda f: {"v": f.iso8601(), "ms": f.random_int(3, 900)}),
    (
        "Job started at {v} (unix {u}).",
        lambda f: {"v": f.date_time().strftime("%Y-%m-%d %H:%M:%S"), "u": f.unix_time()},
    ),
    ("The meeting moved to {v} at {t}.", lambda f: {"v": f.date(), "t": f.time()}),
    ("Total due: {v} (tax {p}%).", lambda f: {"v": f.pricetag(), "p": f.random_int(5, 25)}),
    (
        "Tracking number {v} via UPS.",
        lambda f: {"v": "1Z" + f.bothify("???######").upper() + f.numerify("#######")},
    ),
    (
        "Invoice {v} covers {n} items.",
        lambda f: {"v": f.bothify("INV-####-######"), "n": f.random_int(1, 40)},
    ),
    ("Use port {p} and timeout {t} ms.", lambda f: {"p": f.port_number(), "t": f.random_int(1000, 60000)}),
    (
        "Quantity {a} units, batch {b}.",
        lambda f: {"a": f.random_int(1, 10**6), "b": f.numerify("####-##-##")},
    ),
    ("Coordinates {a}, {b} for the warehouse.", lambda f: {"a": f.latitude(), "b": f.longitude()}),
    ("Card ending in {v} was charged {a}.", lambda f: {"v": f.numerify("####"), "a": f.pricetag()}),
    ("The {p} costs {v} per month.", lambda f: {"p": f.word(), "v": f.pricetag()}),
    ("Model gpt-4o-mini-{v} answered in {ms} ms.", lambda f: {"v": f.date(), "ms": f.random_int(100, 3000)}),
    (
        "Error {c} at /v1/chat/completions after {s} s",
        lambda f: {"c": f.http_status_code(), "s": f.random_int(1, 30)},
    ),
    ("Reference {v} for the claim.", lambda f: {"v": f.bothify("REF-####-????").upper()}),
    (
        "Build {v} passed {a} of {b} tests.",
        lambda f: {"v": f.numerify("2024####.####"), "a": f.random_int(1, 99), "b": 100},
    ),
    ("Ship from the {c} warehouse, dock {d}.", lambda f: {"c": f.city(), "d": f.random_int(1, 40)}),
    ("Color {v}, size {s}.", lambda f: {"v": f.hex_color(), "s": f.random_element(["S", "M", "L", "XL"])}),
    ("Mac address {v} registered on the network.", lambda f: {"v": f.mac_address()}),
]
# Tool-call argument values that are not PII under keys that are not PII.
NEGATIVE_ARGUMENTS: list[tuple[str, Callable[[Any], str]]] = [
    ("order_id", lambda f: f.numerify("##########")),
    ("sku", lambda f: f.bothify("??-####").upper()),
    ("version", lambda f: f.numerify("%.#.#")),
    ("request_id", lambda f: f.uuid4()),
    ("amount", lambda f: str(f.pyfloat(left_digits=4, right_digits=2, positive=True))),
    ("quantity", lambda f: str(f.random_int(1, 500))),
    ("created_at", lambda f: f.iso8601()),
    ("isbn", lambda f: f.isbn13()),
    ("status", lambda f: f.random_element(["shipped", "pending", "refunded", "cancelled"])),
    ("sha", lambda f: f.sha1()),
]


def _negative(fake: Any, index: int) -> Snippet:
    if index % 4 == 3:
        key, make = NEGATIVE_ARGUMENTS[index // 4 % len(NEGATIVE_ARGUMENTS)]
        return Snippet(make(fake), key=key)
    template, values = NEGATIVE_TEMPLATES[index % len(NEGATIVE_TEMPLATES)]
    return Snippet(template.format(**values(fake)))


def build_faker_corpus(
    per_type: int = 50, negatives: int = 200, mixed: int = 30, seed: int = 20261206
) -> list[Snippet]:
    """``per_type`` snippets of each PII type, ``mixed`` tickets with four entities each, three
    number-valued tool-call arguments per 10 of ``per_type``, and ``negatives`` hard negatives."""
    fake = _faker(seed)
    corpus = [_positive(fake, kind, index) for kind in PiiType for index in range(per_type)]
    corpus += [s for _ in range(max(1, per_type // 10)) for s in _number_arguments(fake)]
    corpus += [_mixed(fake) for _ in range(mixed)]
    corpus += [_negative(fake, index) for index in range(negatives)]
    return corpus
