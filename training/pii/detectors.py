"""PII detectors that work offline: patterns plus the checks that make them precise (pure).

Each detector returns :class:`Finding` spans. Patterns alone over-match (an order number
looks like a card number, a version string like an IP address), so each kind is checked
the way its issuer defines it: cards by the Luhn checksum and a known issuer prefix, IBANs
by their country's length and the ISO 7064 mod-97 check, SSNs by the ranges the SSA never
issues, IP addresses by the ``ipaddress`` parser and not after "version". Person names
need a model for real coverage; the built-in detector finds names after a cue (a title,
"my name is", a "Name:" field, a signature) or starting with a common first name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum


class PiiType(StrEnum):
    PRIVATE_KEY = "PRIVATE_KEY"
    URL_CREDENTIALS = "URL_CREDENTIALS"
    API_KEY = "API_KEY"  # provider keys, bearer tokens, JWTs
    EMAIL = "EMAIL"
    IBAN = "IBAN"
    CREDIT_CARD = "CREDIT_CARD"
    US_SSN = "US_SSN"
    PHONE = "PHONE"
    IP_ADDRESS = "IP_ADDRESS"
    PERSON = "PERSON"


# When two findings overlap, the earlier type in this order wins.
PRIORITY = {kind: rank for rank, kind in enumerate(PiiType)}


@dataclass(frozen=True)
class Finding:
    type: PiiType
    start: int
    end: int
    text: str


# --- checks -------------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|3[068]|6011|65|64[4-9]|35|62)")


def card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


# Country code → IBAN length (ISO 13616 registry, the countries one meets most).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GI": 23,
    "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "KW": 30, "KZ": 20,
    "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "ME": 22, "MK": 19, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


# --- patterns -----------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]+?-----END (?:[A-Z]+ )*PRIVATE KEY-----"
)
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://(?P<cred>[^\s:/@]+:[^\s/@]+)@[^\s/]+", re.I)
_API_KEYS = [
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"),  # JWT
    re.compile(r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)"),
    re.compile(r"\b(?:sk|pk|rk)-(?:proj-|live_|test_)?[A-Za-z0-9_-]{20,}"),  # OpenAI-, Stripe-style
    re.compile(r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    re.compile(r"\bpgk-[A-Za-z0-9_-]{20,}"),  # Protégé gateway keys
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub tokens
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API keys
    re.compile(
        r"(?i)(?<![a-z0-9])(?:api[_-]?key|secret|token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;]{8,})"
    ),
]
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?P<area>\d{3})([- ])(?P<group>\d{2})\2(?P<serial>\d{4})(?![\d-])")
_SSN_PLAIN = re.compile(r"(?i)\b(?:ssn|social security(?: number)?)\b\D{0,12}(?P<ssn>\d{9})\b")
# International (+CC ...) or North American ((555) 123-4567, 555-123-4567, 555.123.4567).
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|\d{3}([.-])\d{3}\1\d{4})(?![\w-])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Dotted numbers right after these words are versions or section numbers, not addresses.
_VERSION_CUE = re.compile(
    r"(?i)(?:\bv|version|release|build|ver\.?|firmware|kernel|patch|update|rev(?:ision)?\.?"
    r"|section|chapter|clause|§)\s*$"
)

_NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_FULL_NAME = rf"{_NAME}(?:\s+(?:[A-Z]\.\s+)?{_NAME}){{0,2}}"
_PERSON_CUES = [
    re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\.?\s+(?P<name>{_FULL_NAME})"),
    re.compile(rf"(?i:\bmy name is|\bname's)\s+(?P<name>{_FULL_NAME})"),
    re.compile(
        rf"(?i:\b(?:full\s+)?name|\bcustomer|\bcontact|\bpatient|\bemployee)\s*[:=]\s*(?P<name>{_FULL_NAME})"
    ),
    re.compile(rf"(?i:\b(?:regards|sincerely|thanks|cheers|best)),?\s*\n\s*(?P<name>{_FULL_NAME})"),
]
# Common given names (US SSA, UK ONS and EU registers): a capitalized word after one is a surname.
FIRST_NAMES = frozenset(
    """
    James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel
    Matthew Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy
    Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin
    Scott Brandon Benjamin Samuel Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry
    Tyler Aaron Jose Adam Nathan Henry Peter Zachary Douglas Harold Kyle Noah Ethan Oliver Lucas
    Liam Mason Logan Elijah Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah
    Karen Lisa Nancy Betty Sandra Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda
    Melissa Deborah Stephanie Dorothy Rebecca Sharon Laura Cynthia Amy Kathleen Angela Shirley
    Brenda Emma Anna Pamela Nicole Samantha Katherine Christine Helen Debra Rachel Carolyn Janet
    Maria Catherine Heather Diane Olivia Julie Joyce Victoria Ruth Virginia Lauren Kelly
    Christina Joan Evelyn Judith Andrea Hannah Megan Cheryl Jacqueline Martha Madison Teresa
    Gloria Sara Janice Ann Kathryn Abigail Sophia Frances Jean Alice Judy Isabella Julia Grace
    Amber Denise Danielle Marilyn Beverly Charlotte Natalie Theresa Diana Brittany Doris Kayla
    Alexis Lori Marie Ava Mia Chloe Lily Ella Zoe Priya Aisha Fatima Mohammed Ahmed Ali Omar
    Yusuf Wei Li Chen Hiroshi Yuki Kenji Sakura Raj Arjun Ananya Sofia Lucia Mateo Diego Carlos
    Luis Juan Miguel Pablo Javier Elena Isabel Carmen Pierre Jean Marie Louis Camille Hans Klaus
    Jurgen Anke Lars Sven Ingrid Astrid Giulia Marco Luca Francesca Aleksandr Olga Ivan Natasha
    Dmitri Sergei Katarzyna Piotr Tomasz Agnieszka Noor Leila Amir Sina Mehmet Emre Ayse
    """.split()  # noqa: SIM905 - a word list reads better as text
)
# Capitalized words that follow a first name without being a surname.
_NOT_SURNAMES = frozenset(
    """
    Street Road Avenue Lane Drive Bank Inc Ltd Group Corp Company University
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_GAZETTEER = re.compile(r"\b(?P<first>[A-Z][a-z]+)\s+(?P<last>[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?)\b")


# --- detectors ----------------------------------------------------------------------------
def _spans(pattern: re.Pattern[str], text: str, kind: PiiType, group: str | int = 0) -> Iterator[Finding]:
    for match in pattern.finditer(text):
        start, end = match.span(group)
        if start >= 0:
            yield Finding(kind, start, end, text[start:end])


def find_private_keys(text: str) -> Iterator[Finding]:
    yield from _spans(_PRIVATE_KEY, text, PiiType.PRIVATE_KEY)


def find_url_credentials(text: str) -> Iterator[Finding]:
    yield from _spans(_URL_CREDENTIALS, text, PiiType.URL_CREDENTIALS, "cred")


def find_api_keys(text: str) -> Iterator[Finding]:
    for pattern in _API_KEYS:
        group = "secret" if "secret" in pattern.groupindex else 0
        yield from _spans(pattern, text, PiiType.API_KEY, group)


def find_emails(text: str) -> Iterator[Finding]:
    yield from _spans(_EMAIL, text, PiiType.EMAIL)


def find_ibans(text: str) -> Iterator[Finding]:
    for match in _IBAN.finditer(text):
        candidate = match.group()
        # The pattern may run into the next word; keep the longest prefix that is a valid IBAN.
        for end in range(len(candidate), 14, -1):
            if iban_ok(candidate[:end].replace(" ", "")):
                yield Finding(PiiType.IBAN, match.start(), match.start() + end, candidate[:end])
                break


def find_cards(text: str) -> Iterator[Finding]:
    for match in _CARD.finditer(text):
        if card_ok(re.sub(r"[ -]", "", match.group())):
            yield Finding(PiiType.CREDIT_CARD, match.start(), match.end(), match.group())


def find_ssns(text: str) -> Iterator[Finding]:
    for match in _SSN.finditer(text):
        if ssn_ok(match["area"], match["group"], match["serial"]):
            yield Finding(PiiType.US_SSN, match.start(), match.end(), match.group())
    for match in _SSN_PLAIN.finditer(text):
        digits = match["ssn"]
        if ssn_ok(digits[:3], digits[3:5], digits[5:]):
            yield Finding(PiiType.US_SSN, match.start("ssn"), match.end("ssn"), digits)


def find_phones(text: str) -> Iterator[Finding]:
    for match in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 7 <= len(digits) <= 15:
            yield Finding(PiiType.PHONE, match.start(), match.end(), match.group())


def find_ip_addresses(text: str) -> Iterator[Finding]:
    for match in _IPV4.finditer(text):
        if _VERSION_CUE.search(text[max(0, match.start() - 12) : match.start()]):
            continue  # "version 1.2.3.4" is a version, not an address
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        yield Finding(PiiType.IP_ADDRESS, match.start(), match.end(), match.group())
    for match in _IPV6.finditer(text):
        if match.group().count(":") < 2 or not any(c.isalnum() for c in match.group()):
            continue
        try:
            ipaddress.IPv6Address(match.group())
        except ValueError:
            continue
        yield Finding(PiiType.IP_ADDRESS, match.start(), match.end(), match.group())


def find_people(text: str) -> Iterator[Finding]:
    for pattern in _PERSON_CUES:
        yield from _spans(pattern, text, PiiType.PERSON, "name")
    for match in _GAZETTEER.finditer(text):
        if match["first"] in FIRST_NAMES and match["last"] not in _NOT_SURNAMES:
            yield Finding(PiiType.PERSON, match.start(), match.end(), match.group())


DETECTORS: dict[PiiType, Callable[[str], Iterator[Finding]]] = {
    PiiType.PRIVATE_KEY: find_private_keys,
    PiiType.URL_CREDENTIALS: find_url_credentials,
    PiiType.API_KEY: find_api_keys,
    PiiType.EMAIL: find_emails,
    PiiType.IBAN: find_ibans,
    PiiType.CREDIT_CARD: find_cards,
    PiiType.US_SSN: find_ssns,
    PiiType.PHONE: find_phones,
    PiiType.IP_ADDRESS: find_ip_addresses,
    PiiType.PERSON: find_people,
}


def detect(text: str, types: frozenset[PiiType] | None = None) -> list[Finding]:
    """Non-overlapping findings in text order; where spans overlap, the higher-priority type
    (then the longer span) wins."""
    found = [f for kind, find in DETECTORS.items() if types is None or kind in types for f in find(text)]
    found.sort(key=lambda f: (PRIORITY[f.type], -(f.end - f.start), f.start))
    kept: list[Finding] = []
    for finding in found:
        if all(finding.end <= other.start or finding.start >= other.end for other in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)
