"""PII detectors that work offline: patterns plus the checks that make them precise (pure).

Each detector returns :class:`Finding` spans. Patterns alone over-match (an order number
looks like a card number, a version string like an IP address), so each kind is checked
the way its issuer defines it: cards by the Luhn checksum and a known issuer prefix, IBANs
by their country's length and the ISO 7064 mod-97 check, SSNs by the ranges the SSA never
issues, national ids by their check digits (:mod:`protege.pii.national_ids`), IP
addresses by the ``ipaddress`` parser and not after "version". Values that carry no check
of their own — dates of birth, passport numbers, phone numbers written as bare digits —
count only after a cue ("born", "passport no.", "call me at"), or, in tool-call arguments,
under a key that names them (``{"dob": ...}``: see :func:`detect_value`).

Person names and postal addresses need a model for real coverage: the NER backend
(:mod:`protege.pii.ner`) adds them; the built-in detectors find names after a cue
(a title, "my name is", a "Name:" field, a signature) or starting with a common first name,
and addresses anchored on a street line (a house number and a street type, in the forms
of English and the main EU languages) or a postcode line, extended over the adjacent
address-like parts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from protege.pii.national_ids import NATIONAL_ID_PATTERNS, SIX_DIGITS, WITHOUT_SIX_DIGITS


class PiiType(StrEnum):
    # The order is the priority when two findings overlap: earlier wins.
    PRIVATE_KEY = "PRIVATE_KEY"
    URL_CREDENTIALS = "URL_CREDENTIALS"
    API_KEY = "API_KEY"  # provider keys and tokens, bearer tokens, JWTs, password= values
    EMAIL = "EMAIL"
    IBAN = "IBAN"
    CREDIT_CARD = "CREDIT_CARD"
    US_SSN = "US_SSN"
    NATIONAL_ID = "NATIONAL_ID"  # UK NINO and EU national numbers (see national_ids.py)
    PASSPORT = "PASSPORT"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"
    PHONE = "PHONE"
    IP_ADDRESS = "IP_ADDRESS"
    PERSON = "PERSON"
    ADDRESS = "ADDRESS"


# When two findings overlap, the earlier type in this order wins.
PRIORITY = {kind: rank for rank, kind in enumerate(PiiType)}


@dataclass(frozen=True)
class Finding:
    type: PiiType
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Gated:
    """A costly pattern and a cheap one, the gate, that finds something inside every match of it:
    a text where the gate finds nothing is not searched with the pattern. The gate has no
    lookaround and no anchor (a match inside a match is then one in the text) and, where
    ``folded``, is searched in the text lowered (``str.lower``): an ``(?i)`` pattern is slow to
    scan, a lowercase literal fast. That the gate holds is tested on the PII corpora."""

    pattern: re.Pattern[str]
    gate: re.Pattern[str]
    folded: bool = False

    def opens(self, text: str, lowered: str) -> bool:
        return self.gate.search(lowered if self.folded else text) is not None


# --- checks -------------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Issuer identification numbers: Visa, Mastercard, Amex, Diners, Discover, JCB, UnionPay, Maestro.
_CARD_PREFIX = re.compile(r"^(4|5[0-8]|2[2-7]|3[47]|3[068]|6011|65|64[4-9]|35|62|1800|2131|6304|67)")
_MAESTRO_SHORT = re.compile(r"^(5018|5020|5038|5893|6304|6759|676[1-3])")  # Maestro cards may have 12 digits


def card_ok(digits: str) -> bool:
    length_ok = 13 <= len(digits) <= 19 or (len(digits) == 12 and bool(_MAESTRO_SHORT.match(digits)))
    return length_ok and bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


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


# --- secrets ------------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]+?-----END (?:[A-Z]+ )*PRIVATE KEY-----"
)
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://(?P<cred>[^\s:/@]+:[^\s/@]+)@[^\s/]+", re.I)


class _WordStart:
    """A pattern that must start a word: ``\\b`` + ``source``, searched as ``source`` alone.

    A leading ``\\b`` turns off the regex engine's fast scan for a literal prefix: on a
    460-character text, ``\\beyJ...`` takes 7.6 µs a search and ``eyJ...`` 0.5 µs. The
    word boundary is checked here instead, on the few places the literal occurs; the
    matches are the same (``tests/pii/test_pii.py``).
    """

    def __init__(self, source: str) -> None:
        self.pattern = re.compile(source)
        self.groupindex = self.pattern.groupindex

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        position = 0
        while (match := self.pattern.search(text, position)) is not None:
            start = match.start()
            if start and (text[start - 1].isalnum() or text[start - 1] == "_"):  # inside a word
                position = start + 1
                continue
            yield match
            position = max(match.end(), start + 1)


_SECRET_KEYS = r"api[_-]?key|secret|token|password|passwd|passphrase|pwd|client[_-]?secret|access[_-]?key"
_API_KEYS: list[re.Pattern[str] | _WordStart] = [
    # JWT: three base64url parts, the header a JSON object ("eyJ" is base64 for '{"').
    _WordStart(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"),
    re.compile(r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)"),
    _WordStart(r"sk-ant-(?:api|admin|oat|ort)\d{2}-[A-Za-z0-9_-]{20,}"),  # Anthropic
    _WordStart(r"(?:sk|pk|rk)-(?:proj-|live_|test_)?[A-Za-z0-9_-]{20,}"),  # OpenAI-, Stripe-style
    _WordStart(r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    _WordStart(r"pgk-[A-Za-z0-9_-]{20,}"),  # Protégé gateway keys
    _WordStart(r"(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    _WordStart(r"gh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub tokens
    _WordStart(r"github_pat_[A-Za-z0-9_]{40,}\b"),  # GitHub fine-grained tokens
    _WordStart(r"gl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|oas)-[A-Za-z0-9_-]{20,}"),  # GitLab tokens
    _WordStart(r"xox[abposre]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    _WordStart(r"xapp-\d-[A-Za-z0-9-]{20,}"),  # Slack app-level tokens
    re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}"),  # Slack webhooks
    _WordStart(r"AIza[0-9A-Za-z_-]{35}\b"),  # Google API keys
    _WordStart(r"ya29\.[0-9A-Za-z_-]{20,}"),  # Google OAuth access tokens
    _WordStart(r"GOCSPX-[0-9A-Za-z_-]{20,}"),  # Google OAuth client secrets
    re.compile(rf"(?i)(?<![a-z0-9])(?:{_SECRET_KEYS})\b[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;]{{8,}})"),
]
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){11,18}(?![\w-])")
_CARD_CUE = re.compile(r"(?i)\b(?:card|maestro|debit|credit)\b")
_SSN = re.compile(r"(?<![\d-])(?P<area>\d{3})([- ])(?P<group>\d{2})\2(?P<serial>\d{4})(?![\d-])")
_SSN_PLAIN = re.compile(r"(?i)\b(?:ssn|social security(?: number)?)\b\D{0,12}(?P<ssn>\d{9})\b")

# --- phones -------------------------------------------------------------------------------
# A phone-shaped run: an optional + or 00, digits in groups separated by one space, dot,
# dash or slash, parenthesised area codes and trunk prefixes ("+44 (0)20 ..."), an extension.
_PHONE = re.compile(
    r"(?<![\w+/.,-])(?:\+\s?)?(?:\(\+?\d{1,5}\)|\d)(?:(?:[ .\-/]|/ )?(?:\(\d{1,5}\)|\d)){5,19}"
    r"(?:\s?(?:x|ext\.?|extension)\s?\d{1,6})?(?![\w/-]|[.,]\d)",
    re.I,
)
_NANP = re.compile(r"^(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}([.-]))\d{3}[.-]\d{4}$")
_DATE_SHAPE = re.compile(r"^\d{1,4}([./-])\d{1,2}\1\d{1,4}$")
# Words before a number that say it is a phone number.
_PHONE_CUE = re.compile(
    r"(?i)(?:phone|tel(?:ephone)?|mobile|cell|fax|call(?:ed|ing)?|ring|dial|text|sms|whats ?app|"
    r"contact|reach|telefon|téléphone|teléfono|telefono|handy|móvil|cellulare|portable|mob|ph|tlf|puh)"
    r"\b[^\n\d]{0,25}$"
)
_EXTENSION = re.compile(r"(?i)\s?(?:x|ext\.?|extension)\s?\d+$")

# --- dates of birth, passports --------------------------------------------------------------
_MONTHS = (
    r"(?:jan(?:uary|vier|uar|eiro)?|feb(?:ruary|ruar|rero)?|fév(?:rier)?|mar(?:ch|s|zo|ço)?|märz|"
    r"apr(?:il|ile)?|avr(?:il)?|abr(?:il)?|may|mai|mayo|maggio|maio|jun(?:e|i|io)?|juin|giu(?:gno)?|"
    r"jul(?:y|i|io)?|juil(?:let)?|lug(?:lio)?|aug(?:ust)?|août|ago(?:sto)?|sep(?:t(?:ember)?)?|"
    r"sept(?:iembre|embre)?|set(?:tembre|embro)?|oct(?:ober|obre|ubre)?|okt(?:ober)?|ott(?:obre)?|"
    r"out(?:ubro)?|nov(?:ember|embre|iembre|embro)?|dec(?:ember)?|déc(?:embre)?|dez(?:ember|embro)?|"
    r"dic(?:iembre|embre)?)\.?"
)
_DATE = (
    r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"
    r"|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})"
    rf"|\d{{1,2}}(?:st|nd|rd|th|er|º)?\.?\s+(?:of\s+|de\s+)?{_MONTHS}\s*,?\s+(?:de\s+)?\d{{4}}"
    rf"|{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
    rf"|\d{{1,2}}[-/ ]{_MONTHS}[-/ ]\d{{4}})"
)
_DOB = re.compile(
    r"(?i)\b(?:date\s+of\s+birth|birth\s*date|birthdate|birthday|born(?:\s+on)?|d\.?o\.?b\.?|"
    r"geburtsdatum|geboren(?:\s+am)?|date\s+de\s+naissance|n[ée]e?\s+le|fecha\s+de\s+nacimiento|"
    r"nacid[oa]\s+el|data\s+di\s+nascita|nat[oa]\s+il|geboortedatum|data\s+urodzenia|"
    r"f[öo]delsedatum|f[öo]dd|syntym[äa]aika|data\s+de\s+nascimento|nascid[oa]\s+em)"
    rf"\b[^\n\d]{{0,20}}?(?P<date>{_DATE})(?![\d/.-]\d)"
)
_PASSPORT = re.compile(
    r"(?i)\b(?:passport|reisepass|passeport|pasaporte|passaporto|paspoort|paszport|pass(?:nummer|nr)|"
    r"passaporte)\b[^\n]{0,30}?(?<![A-Za-z0-9])(?P<number>(?-i:[A-Z]{0,2}\d{6,9}|[A-Z0-9]{1,3}\d{5,8}"
    r"|[CFGHJKLMNPRTVWXYZ][CFGHJKLMNPRTVWXYZ0-9]{8}))(?![A-Za-z0-9])"
)

# --- IP addresses -------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Dotted numbers right after these words are versions or section numbers, not addresses.
_VERSION_CUE = re.compile(
    r"(?i)(?:\bv|version|release|build|ver\.?|firmware|kernel|patch|update|rev(?:ision)?\.?"
    r"|section|chapter|clause|§)\s*$"
)

# --- names --------------------------------------------------------------------------------
_UPPER = "A-ZÀ-ÖØ-ÞĀ-Ž"
_LOWER = "a-zß-öø-ÿā-ž"
_NAME = rf"(?:[{_UPPER}]['’])?[{_UPPER}][{_LOWER}]+(?:[-'’][{_UPPER}][{_LOWER}]+)?"
_FULL_NAME = rf"{_NAME}(?:\s+(?:[{_UPPER}]\.\s+|(?:van|von|de|da|di|del|der|den|la|le)\s+)?{_NAME}){{0,2}}"
# Each cue behind its gate (the sign-off words of the last two: a gate may find more than its pattern).
_SIGN_OFFS = "regards|sincerely|thanks|thank you|cheers|best|br|cordially|yours"
_PERSON_CUES = [
    Gated(re.compile(
        rf"\b(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Madam|Herr|Frau|Mme|Mlle|Sr|Sra|Sig|Sig\.ra)\.?\s+"
        rf"(?P<name>{_FULL_NAME})"
    ), re.compile(r"Mr|Ms|Mx|Miss|Dr|Prof|Sir|Madam|Herr|Frau|Mme|Mlle|Sr|Sig")),
    Gated(re.compile(
        rf"(?i:\bmy name is|\bname's|\bthis is|\bI am|\bI'm|\bsigned|\bcontact person)\s+"
        rf"(?P<name>{_FULL_NAME})"
    ), re.compile(r"my name is|name's|this is|i am|i'm|signed|contact person"), folded=True),
    Gated(re.compile(
        rf"(?i:\b(?:full\s+|first\s+|last\s+|sur)?name|\bcustomer|\bcontact|\bpatient|\bemployee|\bholder"
        rf"|\brecipient|\bsender|\bapplicant|\bpassenger|\bguest|\bowner)\s*[:=]\s*(?P<name>{_FULL_NAME})"
    ), re.compile(
        r"(?:name|customer|contact|patient|employee|holder|recipient|sender|applicant|passenger|guest|owner)"
        r"\s*[:=]"
    ), folded=True),
    Gated(re.compile(
        rf"(?i:\b(?:regards|sincerely|thanks|thank you|cheers|best|br|cordially|yours)),?\s*\n\s*"
        rf"(?P<name>{_FULL_NAME})"
    ), re.compile(rf"(?:{_SIGN_OFFS}),?\s*\n"), folded=True),
    # a sign-off ending the text: "..., deliver to Rome. Thanks, Ines"
    Gated(re.compile(
        rf"(?i:\b(?:regards|sincerely|thanks|thank you|cheers|best)),?\s+(?P<name>{_FULL_NAME})[.!]?\s*$"
    ), re.compile(_SIGN_OFFS), folded=True),
]  # fmt: skip
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

# --- postal addresses -----------------------------------------------------------------------
# Street types written after the name (English: "Baker Street"; USPS Publication 28 suffixes
# and their abbreviations, the UK's), and as the end of one word in Germanic and Nordic
# languages ("Hauptstraße", "Kerkstraat", "Storgatan").
_STREET_SUFFIX_WORDS = """
    street st avenue ave av road rd lane ln drive dr boulevard blvd court ct place pl square sq
    terrace ter way circle cir highway hwy parkway pkwy crescent cres close gardens gdns grove
    row mews hill hills park trail trl plaza plz alley aly point pt ridge rdg run view walk
    heights hts loop pike path expressway expy freeway fwy turnpike tpke causeway cswy
    crossing xing junction jct bypass byp center ctr centre common commons estate estates
    fork forks ford fords glen glens harbor harbour hbr haven heath hollow inlet island isle
    key knoll knolls lake lakes landing lndg light lights lock locks lodge manor manors
    meadow meadows mdws mill mills mission mount mountain mtn neck orchard oval pass passage
    pines port ports prairie pr ranch rapids rest river riv route rte shoal shoals shore
    shores spring springs spur station sta stravenue stream summit smt throughway trace
    track trafficway tunnel underpass union unions valley vly viaduct villa village vlg
    ville vista vis well wells wharf wynd yard yards bend bluff bottom branch brook brooks
    burg burgs camp canyon cape cliff cliffs club corner corners cove coves creek crest
    curve dale dam divide extension ext fall falls ferry field fields flat flats forest
    forge forges fort freeway garden gateway green greens grove groves haven plains plain
    radial ramp skyway squares streets trailer tunnel turn via vw wall ways
"""
# Street types written before the name (Romance, Slavic and other languages: "rue de la
# Paix", "Calle Mayor", "Via Roma", "ulica Długa", "Rua Augusta").
_STREET_PREFIX_WORDS = """
    rue avenue av bd boulevard chemin route place allée allee impasse quai cours passage
    square voie sentier rond-point faubourg calle c/ avda avenida paseo plaza camino carretera
    ronda travesía travesia callejón callejon pasaje glorieta urbanización urbanizacion cuesta
    vía via rambla alameda carrera acceso cañada canada sector viale piazza piazzale corso
    vicolo largo strada contrada borgo lungomare lungotevere salita rotonda incrocio canale
    stretto rua travessa praça praca largo alameda estrada beco calçada calcada ladeira
    ulica ul al aleja plac pl osiedle os rynek droga bulwar skwer strada str bulevardul calea
    pasadizo costanilla plazuela senda vereda bajada subida prolongación prolongacion polígono
    poligono parque barrio pasaje paseig passeig carrer plaça placa avinguda
    piața piata splaiul šoseaul ulice náměstí namesti třída trida nábřeží ulitsa
"""
_STREET_COMPOUND_ENDINGS = (  # noqa: SIM905 - word lists read better as text
    "straße strasse str. weg gasse platz allee ring damm ufer steig pfad chaussee markt stieg "
    "graben berg hof park anger zeile kamp tor "  # German
    "straat laan weg gracht plein kade singel dijk steeg pad dreef hof markt park baan "  # Dutch
    "gatan vägen gränd torget stigen backen allén plan "  # Swedish
    "gate gaten veien vegen veg vei vej gade allé torv stræde "  # Norwegian, Danish
    "katu tie kuja polku tori raitti väylä "  # Finnish
    "utca út tér körút köz sor "  # Hungarian
).split()
_STREET_SUFFIX = "|".join(sorted({re.escape(w) for w in _STREET_SUFFIX_WORDS.split()}, key=len, reverse=True))
_STREET_PREFIX = "|".join(sorted({re.escape(w) for w in _STREET_PREFIX_WORDS.split()}, key=len, reverse=True))
_COMPOUND = "|".join(sorted({re.escape(w) for w in _STREET_COMPOUND_ENDINGS}, key=len, reverse=True))
_WORD = rf"[{_UPPER}{_LOWER}0-9][{_UPPER}{_LOWER}0-9'’.-]*"
_CAP_WORD = rf"(?:[{_UPPER}0-9][{_UPPER}{_LOWER}0-9'’.-]*)"
_HOUSE = r"\d{1,6}(?:\s?[A-Za-z](?![A-Za-z]))?(?:\s?[-/]\s?\d{1,5}[A-Za-z]?)?"
_UNIT = (
    r"(?:,?\s*(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|bldg|building|piso|puerta|"
    r"esc|escalera|interno|int|scala|appartamento|piano|departamento|dpto|andar|lokal|lok|étage|etage|"
    r"appartement|app|whg|wohnung|lgh|bus|box|po box)"
    r"\.?\s*#?\s*[A-Za-z0-9-]{1,6}|,?\s*#\s?\d{1,6}|,?\s*\d{1,2}(?:º|ª|°)\s?[A-Za-z]?|,?\s*s/n)"
)
_STREET_LINES = [
    # 221B Baker Street, 4821 N Oak Ridge Dr Apt 5 (the number first, the type last)
    re.compile(
        rf"(?<![\w.-])(?P<a>{_HOUSE}),?\s+(?:[NSEW]\.?\s+|(?:North|South|East|West)\s+)?"
        rf"(?:{_CAP_WORD}\s+){{0,4}}(?i:{_STREET_SUFFIX})\b\.?(?:\s+(?:[NSEW]{{1,2}})\b\.?)?(?:{_UNIT})*"
    ),
    # rue de la Paix 12 / 406, rue Éléonore Louis / Calle de Camilo Burgos 19 / Via Roma, 18
    re.compile(
        rf"(?:(?<![\w.-])(?P<a>{_HOUSE}),?\s+)?(?<![\w-])(?i:{_STREET_PREFIX})\b\.?\s+"
        rf"(?:(?:{_CAP_WORD}|(?:de|del|della|dei|di|da|do|dos|das|du|des|la|le|les|l'|d'|el|los|"
        rf"las|des|y|e|et|i|al|alla|delle|degli|sul|sulla|van|von|der|den|het|im|am|an)\b)[\s,]*){{1,6}}?"
        rf"(?:,\s*|\s+)(?:{_HOUSE}|(?i:s/n))\b(?:{_UNIT})*"
    ),
    re.compile(
        rf"(?:(?<![\w.-])(?P<a>{_HOUSE}),?\s+)(?<![\w-])(?i:{_STREET_PREFIX})\b\.?\s+"
        rf"(?:(?:{_CAP_WORD}|(?:de|del|della|di|da|do|dos|das|du|des|la|le|les|l'|d'|el|los|las)\b)\s*){{1,5}}"
    ),
]  # fmt: skip
# After a one-word street (Hauptstraße, Kerkstraat, Storgatan, Dimitrios-Rohleder-Straße): its number.
_AFTER_COMPOUND = re.compile(rf"\.?\s*,?\s*{_HOUSE}\b(?:{_UNIT})*")
_STREET_WORDS = frozenset(_STREET_SUFFIX_WORDS.split()) | frozenset(_STREET_PREFIX_WORDS.split())
_COMPOUND_ENDINGS = tuple(w.rstrip(".") for w in _STREET_COMPOUND_ENDINGS)
_TOKEN = re.compile(r"[^\W\d_][\w'’/-]*\.?")


def _street_words(text: str) -> Iterator[tuple[int, int, bool]]:
    """Where a street type is written: a word such as "street" or "rue" (False), or a
    one-word street name such as "Hauptstraße" (True)."""
    for match in _TOKEN.finditer(text):
        word = match.group().lower()
        bare = word.rstrip(".")
        if bare in _STREET_WORDS or word in _STREET_WORDS:
            yield match.start(), match.end(), False
        elif (
            match.group()[0].isupper()
            and len(bare) > 4
            and bare.endswith(_COMPOUND_ENDINGS)
            and bare not in _NOT_COMPOUNDS
        ):
            yield match.start(), match.start() + len(bare), True


# Words that end like a street but are not one ("sweden", "however", "together").
_NOT_COMPOUNDS = frozenset(["sweden", "however", "together", "whatever", "whenever", "forever", "weather"])
_TOWN_PARTICLES = (
    "en|de|la|le|les|lès|sur|sous|am|an|im|in|di|del|della|do|da|dos|das|du|des|aan|op|den|der|bei|upon|on|"
    "und|et|y|e"
)
# Postcode lines: a postcode and the town (or the town, then the postcode), or a US/Canadian
# town, state and ZIP; and the UK postcode, which alone is precise.
_POSTCODE_LINES = [
    Gated(re.compile(
        rf"(?<![\w-])(?:[{_UPPER}][{_LOWER}'’-]*\.?\s+){{0,4}}[{_UPPER}][{_LOWER}'’-]*,?\s+"
        r"(?:[A-Z]{2})\s+\d{5}(?:-\d{4})?(?![\w-])"
    ), re.compile(r"[A-Z]{2}\s+\d{5}")),  # Springfield, IL 62704
    Gated(  # US military mail
        re.compile(r"(?<![\w-])(?:[APF]PO|DPO)\s+A[AEP]\s+\d{5}(?![\w-])"),
        re.compile(r"PO\s+A"),
    ),
    Gated(  # UK postcodes
        re.compile(r"(?<![\w-])(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2})(?![\w-])"),
        re.compile(r"[A-Z]\d"),
    ),
    Gated(  # CA
        re.compile(r"(?<![\w-])[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z]\s?\d[ABCEGHJ-NPRSTV-Z]\d(?![\w-])"),
        re.compile(r"[A-Z]\d[A-Z]"),
    ),
    Gated(re.compile(
        rf"(?<![\w.,/-])(?:[A-Z]{{1,2}}-)?(?:\d{{5}}|\d{{4}}\s?[A-Z]{{2}}|\d{{2}}-\d{{3}}|\d{{3}}\s\d{{2}}|\d{{4}}-\d{{3}}|\d{{4}})"
        rf",?\s+(?:[{_UPPER}][{_UPPER}{_LOWER}'’-]*)"
        rf"(?:[ -](?:[{_UPPER}][{_UPPER}{_LOWER}'’.-]*|(?:{_TOWN_PARTICLES})(?=[ -][{_UPPER}])))*"
        r"(?:\s\([A-Z]{2}\))?(?![\w-])"
    ), re.compile(rf"\d(?:\s?[A-Z]{{2}})?,?\s+[{_UPPER}]")),
    # ^ 75002 Paris, 4835 RO Son en Breugel, 55-744 Bydgoszcz, 9337-406 Gandra
    Gated(re.compile(
        rf"(?<![\w-])[{_UPPER}][{_UPPER}{_LOWER}'’-]+(?:\s[{_UPPER}][{_UPPER}{_LOWER}'’-]+){{0,2}},\s(?:\d{{5}}|\d{{2}}-\d{{3}}|\d{{4}}-\d{{3}})(?![\w-])"
    ), re.compile(r",\s\d\d")),  # Girona, 02408
]  # fmt: skip
_UK_POSTCODE = _POSTCODE_LINES[2].pattern
_DIGIT = re.compile(r"\d")
_ADDRESS_CUE = re.compile(
    r"(?i)\b(?:address|addr|ship(?:ping)?\s+to|deliver(?:y)?\s+to|send\s+(?:it\s+)?to|mail\s+(?:it\s+)?to|"
    r"lives?\s+at|living\s+at|located\s+at|moved\s+to|resid(?:es|ing|ence)\s+(?:at|in)|adresse|dirección|direccion|"
    r"indirizzo|adres|adress|anschrift|domicile|domicilio|morada|endereço)\b[^\n\d]{0,20}$"
)
# A part of an address next to a street or postcode line: a few capitalized words (a town, a
# district, a building), a unit, a state or country; separated from it by a comma or a line break.
_PART_PARTICLES = "de|la|le|les|sur|en|am|an|im|di|del|della|do|da|dos|das|du|des|der|den|of|upon|on"
_ADDRESS_PART = re.compile(
    rf"^\s*(?:(?:{_UNIT.replace('(?:,?', '(?:')})"
    rf"|(?:[{_UPPER}0-9][{_UPPER}{_LOWER}0-9'’.()/-]*|(?:{_PART_PARTICLES})\b)"
    rf"(?:\s+(?:[{_UPPER}0-9][{_UPPER}{_LOWER}0-9'’.()/-]*|(?:{_PART_PARTICLES})\b)){{0,4}})\s*$"
)
_UNIT_PART = re.compile(rf"^\s*(?:{_UNIT.replace('(?:,?', '(?:', 1)})\s*$")
_SEPARATOR = re.compile(r"\s*(?:,|;|\n|\|)\s*")
# Capitalized words that are not names: a name-shaped run holding one is something else
# ("Customer Service", "Monday Morning", "Acme Ltd", "Baker Street").
NOT_NAMES = frozenset(
    """
    The This That These Those There Here Please Thanks Thank Hi Hello Hey Dear Regards Best Cheers
    Customer Customers Support Service Services Team Desk Help Helpdesk Order Orders Invoice Ticket
    Account Billing Sales Manager Department Office Admin Administrator Agent Assistant User Client
    Tel Phone Fax Mobile Email Mail Address Name Note Notes Subject Re Fwd Attn Ref Dept Ext
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June
    July August September October November December Morning Afternoon Evening Today Tomorrow
    Inc Ltd Llc Plc Gmbh Ag Sa Sas Srl Bv Nv Ab Oy As Co Corp Corporation Company Group Holdings
    Bank University College School Hospital Clinic Institute Foundation Association Council Ministry
    North South East West Central New Old Great United Saint St Mount Lake River Port Fort
    Barcode Checksum Version Release Build Error Warning Request Response Status Total Quantity
    National Insurance Social Security Tax Health Passport Identity Card Number Registration
    """.split()  # noqa: SIM905 - a word list reads better as text
) | frozenset(w.capitalize() for w in _STREET_SUFFIX_WORDS.split() + _STREET_PREFIX_WORDS.split())
_NOT_SURNAMES = NOT_NAMES | frozenset({"Plains", "Hills"})
_GAZETTEER = re.compile(rf"\b(?P<first>[{_UPPER}][{_LOWER}]+)\s+(?P<last>{_NAME})\b")


# --- detectors ----------------------------------------------------------------------------
def _spans(
    pattern: re.Pattern[str] | _WordStart, text: str, kind: PiiType, group: str | int = 0
) -> Iterator[Finding]:
    for match in pattern.finditer(text):
        start, end = match.span(group)
        if start >= 0 and end > start:
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
    for match in _EMAIL.finditer(text):
        token_start = max(text.rfind(" ", 0, match.start()), text.rfind("\n", 0, match.start())) + 1
        if "://" in text[token_start : match.start()]:
            continue  # the password and host of scheme://user:password@host (URL_CREDENTIALS)
        yield Finding(PiiType.EMAIL, match.start(), match.end(), match.group())


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
        digits = re.sub(r"[ -]", "", match.group())
        if card_ok(digits) or (
            # 12-digit Maestro cards of the other prefixes: as common a length as order numbers'.
            len(digits) == 12
            and re.match(r"5[06-8]|6", digits)
            and luhn_ok(digits)
            and _CARD_CUE.search(text[max(0, match.start() - 30) : match.start()])
        ):
            yield Finding(PiiType.CREDIT_CARD, match.start(), match.end(), match.group())


def find_ssns(text: str) -> Iterator[Finding]:
    for match in _SSN.finditer(text):
        if ssn_ok(match["area"], match["group"], match["serial"]):
            yield Finding(PiiType.US_SSN, match.start(), match.end(), match.group())
    for match in _SSN_PLAIN.finditer(text):
        digits = match["ssn"]
        if ssn_ok(digits[:3], digits[3:5], digits[5:]):
            yield Finding(PiiType.US_SSN, match.start("ssn"), match.end("ssn"), digits)


def find_national_ids(text: str) -> Iterator[Finding]:
    """UK National Insurance numbers and the EU national numbers of national_ids.py, each
    by its format and check digits; those without a strong check only after their name."""
    patterns = NATIONAL_ID_PATTERNS if SIX_DIGITS.search(text) else WITHOUT_SIX_DIGITS
    for pattern, valid, needs_cue in patterns:
        for match in pattern.finditer(text):
            if needs_cue and not needs_cue.search(text[max(0, match.start() - 40) : match.start()]):
                continue
            if valid(match):
                yield Finding(PiiType.NATIONAL_ID, match.start(), match.end(), match.group())


def find_passports(text: str) -> Iterator[Finding]:
    yield from _spans(_PASSPORT, text, PiiType.PASSPORT, "number")


def find_dates_of_birth(text: str) -> Iterator[Finding]:
    for match in _DOB.finditer(text):
        if _plausible_birth_date(match["date"]):
            yield Finding(PiiType.DATE_OF_BIRTH, match.start("date"), match.end("date"), match["date"])


def _plausible_birth_date(value: str) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", value)]
    if any(len(n) == 4 for n in re.findall(r"\d+", value)):
        year = next(n for n in numbers if n >= 1000)
        return 1880 <= year <= date.today().year
    return True


def find_phones(text: str) -> Iterator[Finding]:
    for match in _PHONE.finditer(text):
        value = match.group().rstrip(". -/")
        start = match.start()
        end = start + len(value)
        main = _EXTENSION.sub("", value)
        digits = re.sub(r"\D", "", main)
        if not 7 <= len(digits) <= 15 or _DATE_SHAPE.match(main):
            continue
        if _phone_shape_ok(main, digits) or _PHONE_CUE.search(text[max(0, start - 40) : start]):
            yield Finding(PiiType.PHONE, start, end, text[start:end])


def _phone_shape_ok(main: str, digits: str) -> bool:
    """A number written the way phone numbers are, without needing a cue: international
    (+CC or 00CC with grouping), North American, or national with a trunk 0 and grouping."""
    grouped = bool(re.search(r"[ ./()-]", main.strip()))
    if main.startswith("+"):
        return len(digits) >= 8
    if main.startswith("00") and grouped:
        return len(digits) >= 10
    if _NANP.match(main):
        return True
    if re.match(r"^\(?0\d", main) and grouped and len(digits) >= 8:
        # Trunk prefix and groups; not dotted decimals ("0.5 1.25") nor a date ("01-05-2024").
        return "." not in main or bool(re.fullmatch(r"0\d{1,4}(?:\.\d{2,4}){2,4}", main))
    return False


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
    lowered = text.lower()
    for cue in _PERSON_CUES:
        if not cue.opens(text, lowered):
            continue
        for finding in _spans(cue.pattern, text, PiiType.PERSON, "name"):
            if finding.text.split()[0] not in NOT_NAMES:
                yield finding
    for match in _GAZETTEER.finditer(text):
        if match["first"] in FIRST_NAMES and match["last"] not in _NOT_SURNAMES:
            yield Finding(PiiType.PERSON, match.start(), match.end(), match.group())


def find_addresses(text: str) -> Iterator[Finding]:
    """Street lines, and postcode lines next to one (or after an address cue; a UK postcode
    alone), each extended over the address parts that sit beside it."""
    if not _DIGIT.search(text):
        return
    streets = []
    words = list(_street_words(text))
    for start, end, compound in words:
        number = _AFTER_COMPOUND.match(text, end) if compound else None
        if number:
            streets.append((start, number.end()))
    # The other street patterns are costly at every position: run them only around a street word.
    for first, last in _merge(
        [(max(0, start - 90), end + 40) for start, end, compound in words if not compound]
    ):
        window = text[first:last]
        streets += [(first + m.start(), first + m.end()) for p in _STREET_LINES for m in p.finditer(window)]
    postcodes = [
        m.span() for line in _POSTCODE_LINES if line.opens(text, text) for m in line.pattern.finditer(text)
    ]
    anchors = _merge(streets)
    for start, end in _merge(postcodes):
        near_street = any(s - 60 <= end and start <= e + 60 for s, e in anchors)
        cued = _ADDRESS_CUE.search(text[max(0, start - 40) : start])
        if near_street or cued or _UK_POSTCODE.fullmatch(text[start:end]):
            anchors.append((start, end))
    street_starts = {start for start, _ in streets}
    for first, last in _merge(anchors):
        # Before a street line comes a name or a company, not more address ("Ship to Ann Lee,
        # 2 Main St"); before a postcode line, the street and town ("Flat 3, 2 Main St, Leeds, LS1 4AP").
        start, end = _extend_address(text, first, last, backwards=first not in street_starts)
        yield Finding(PiiType.ADDRESS, start, end, text[start:end])


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _extend_address(text: str, start: int, end: int, backwards: bool = True) -> tuple[int, int]:
    """Grow an address anchor over the neighbouring comma- or line-separated parts that read
    like address parts (a town, a unit, a state, a postcode), at most four each way; before a
    street line, over a unit only ("Flat 3")."""
    for _ in range(4):  # forwards
        sep = _SEPARATOR.match(text, end)
        if not sep:
            break
        stop = _SEPARATOR.search(text, sep.end())
        part_end = stop.start() if stop else len(text)
        part = text[sep.end() : part_end]
        sentence = re.search(r"[.!?](?:\s|$)", part)
        if sentence:
            part_end = sep.end() + sentence.start()
            part = text[sep.end() : part_end]
        if not part.strip() or not _ADDRESS_PART.match(part) or len(part) > 60:
            break
        end = sep.end() + len(part.rstrip())
    for _ in range(4):  # backwards
        before = text[:start]
        sep = re.search(r"\s*(?:,|;|\n|\|)\s*$", before)
        if not sep:
            break
        previous = re.split(r"(?:,|;|\n|\||[.!?:](?:\s|$))", before[: sep.start()])[-1]
        # Only the trailing capitalized words of the part: "Please ship to Flat 3" → "Flat 3".
        tail = re.search(
            rf"(?:(?:[{_UPPER}0-9][{_UPPER}{_LOWER}0-9'’.()/-]*|de|la|le|du|des|of)\s*)+$",
            previous,
        )
        if not tail or not _ADDRESS_PART.match(tail.group()) or len(tail.group()) > 60:
            break
        if not backwards and not _UNIT_PART.match(tail.group()):
            break
        start = sep.start() - len(tail.group().rstrip()) - (len(previous) - len(previous.rstrip()))
        start = before.rfind(tail.group().strip(), 0, sep.start() + 1)
        if start < 0:
            break
    return start, end


DETECTORS: dict[PiiType, Callable[[str], Iterator[Finding]]] = {
    PiiType.PRIVATE_KEY: find_private_keys,
    PiiType.URL_CREDENTIALS: find_url_credentials,
    PiiType.API_KEY: find_api_keys,
    PiiType.EMAIL: find_emails,
    PiiType.IBAN: find_ibans,
    PiiType.CREDIT_CARD: find_cards,
    PiiType.US_SSN: find_ssns,
    PiiType.NATIONAL_ID: find_national_ids,
    PiiType.PASSPORT: find_passports,
    PiiType.DATE_OF_BIRTH: find_dates_of_birth,
    PiiType.PHONE: find_phones,
    PiiType.IP_ADDRESS: find_ip_addresses,
    PiiType.PERSON: find_people,
    PiiType.ADDRESS: find_addresses,
}


def resolve(found: list[Finding], text: str) -> list[Finding]:
    """Non-overlapping findings in text order. Where spans overlap, the higher-priority type
    (then the longer span) keeps its span and the other keeps what is left of it, if a word
    is left; a name inside an address (a street named after someone) is part of the address."""
    addresses = [f for f in found if f.type is PiiType.ADDRESS]
    found = [
        f
        for f in found
        if f.type is not PiiType.PERSON or not any(a.start <= f.start and f.end <= a.end for a in addresses)
    ]
    found.sort(key=lambda f: (PRIORITY[f.type], -(f.end - f.start), f.start))
    kept: list[Finding] = []
    for finding in found:
        pieces = [(finding.start, finding.end)]
        for other in kept:
            pieces = [
                piece
                for start, end in pieces
                for piece in ((start, min(end, other.start)), (max(start, other.end), end))
                if piece[1] > piece[0]
            ]
        for piece in pieces:
            start, end = piece
            if piece != (finding.start, finding.end):
                if finding.type not in _WORDS_TYPES:
                    break  # part of an email, a card, a key is not one
                start, end = trim(text, *piece)
                if not re.search(r"\w\w", text[start:end]):
                    continue
            kept.append(Finding(finding.type, start, end, text[start:end]))
    return sorted(kept, key=lambda f: f.start)


_WORDS_TYPES = (PiiType.PERSON, PiiType.ADDRESS)  # what is left of them beside another finding still is one


def trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return start, end


def detect(text: str, types: frozenset[PiiType] | None = None) -> list[Finding]:
    """Non-overlapping findings in text order (see :func:`resolve`)."""
    found = [f for kind, find in DETECTORS.items() if types is None or kind in types for f in find(text)]
    return resolve(found, text)


# --- values under a key (tool-call arguments) --------------------------------------------------
# An argument's name says what its value is: the whole value is then of that type when it has
# the type's shape (a name is words, a date of birth a date, a phone number digits).
_KEY_TYPES: list[tuple[re.Pattern[str], PiiType, re.Pattern[str]]] = [
    (
        re.compile(rf"(?i)(?:^|_)(?:{_SECRET_KEYS}|auth|authorization|credentials?|private_?key)$"),
        PiiType.API_KEY,
        re.compile(r"^\S{8,}$"),
    ),
    (
        re.compile(r"(?i)(?:^|_)(?:ssn|social_?security(?:_?number)?)$"),
        PiiType.US_SSN,
        re.compile(r"^\d{3}-?\d{2}-?\d{4}$"),
    ),
    (
        re.compile(
            r"(?i)(?:^|_)(?:national_?id|nino|ni_?number|insurance_?number|bsn|pesel|nir|insee|dni|nie|nif|"
            r"codice_?fiscale|cf|personnummer|hetu|cnp|oib|tax_?id|id_?number|personal_?(?:id|number|code)|"
            r"identity_?(?:number|card)|rvnr|sv_?nummer|steuer_?id)$"
        ),
        PiiType.NATIONAL_ID,
        re.compile(r"^(?=.*\d)[A-Za-z0-9][A-Za-z0-9 ./-]{4,20}$"),
    ),
    (
        re.compile(r"(?i)(?:^|_)passport(?:_?(?:no|nr|num|number|id))?$"),
        PiiType.PASSPORT,
        re.compile(r"^(?=.*\d)[A-Za-z0-9]{5,12}$"),
    ),
    (
        re.compile(r"(?i)(?:^|_)(?:dob|date_?of_?birth|birth_?date|birthday|born(?:_?on)?|geburtsdatum)$"),
        PiiType.DATE_OF_BIRTH,
        re.compile(rf"(?i)^(?:{_DATE}|\d{{8}})$"),
    ),
    (
        re.compile(r"(?i)(?:^|_)(?:phone|telephone|tel|mobile|cell|fax|msisdn|whatsapp|phone_?number|contact_?number)$"),
        PiiType.PHONE,
        re.compile(r"^[+(]?[\d][\d ().\-/]{5,22}(?:\s?(?:x|ext\.?)\s?\d{1,6})?$"),
    ),
    (
        re.compile(
            r"(?i)(?:^|_)(?:name|full_?name|first_?name|last_?name|given_?name|family_?name|surname|"
            r"middle_?name|maiden_?name|customer(?:_?name)?|contact(?:_?name)?|recipient(?:_?name)?|"
            r"sender(?:_?name)?|cardholder(?:_?name)?|holder(?:_?name)?|patient(?:_?name)?|"
            r"employee(?:_?name)?|passenger(?:_?name)?|guest(?:_?name)?|user_?name|display_?name|"
            r"author|assignee|requester|owner(?:_?name)?|spouse|beneficiary)$"
        ),
        PiiType.PERSON,
        re.compile(rf"^(?!.*\d)[{_UPPER}{_LOWER}][{_UPPER}{_LOWER}'’. -]{{0,60}}$"),
    ),
    (
        re.compile(
            r"(?i)(?:^|_)(?:address|addr|street(?:_?address)?|address_?line_?\d|shipping_?address|"
            r"billing_?address|home_?address|mailing_?address|postal_?address|residence)$"
        ),
        PiiType.ADDRESS,
        re.compile(r"^(?=.*[A-Za-zÀ-ÿ])(?=.*\d).{6,200}$|^(?=.*[A-Za-zÀ-ÿ]).*\s.*\s.{2,200}$", re.S),
    ),
]  # fmt: skip


def key_type(key: str, value: str) -> PiiType | None:
    """The type an argument's name gives its whole value, if the value has that type's shape."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key.strip()).replace("-", "_").replace(" ", "_")
    for pattern, kind, shape in _KEY_TYPES:
        if pattern.search(name) and shape.match(value.strip()):
            return kind
    return None


def key_context(key: str) -> str:
    """An argument's name as words, to put before its value as a cue: ``dateOfBirth`` → ``date of birth``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key)
    return re.sub(r"[_\-.]+", " ", words).strip().lower()
