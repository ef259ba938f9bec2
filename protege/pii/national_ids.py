"""National identity numbers: their formats and check digits, from the issuers' definitions (pure).

Covered: the UK National Insurance number (no check digit: the prefix letters HMRC allocates
and the suffix A–D), and the EU numbers below, each with its check:

| country | number | check |
|---|---|---|
| France | NIR / numéro de sécurité sociale (15 digits, Corsica 2A/2B) | key = 97 − (first 13 mod 97) |
| Germany | Rentenversicherungsnummer (12 characters) | weighted cross-sum mod 10, birth date |
| Spain | DNI and NIE (8 digits or X/Y/Z + 7, then a letter) | letter = TRWAGMYFPDXBNJZSQVHLCKE[n mod 23] |
| Italy | codice fiscale (16 characters) | odd/even character tables mod 26 |
| Netherlands | BSN (9 digits) | the 11-test; only after "BSN" or under such a key (weak check) |
| Poland | PESEL (11 digits) | weights 1-3-7-9, birth date with the century in the month |
| Sweden | personnummer (YYMMDD-NNNC) | Luhn over 10 digits, birth date (or +60 for samordningsnummer) |
| Finland | HETU (DDMMYY·NNNC) | check character = table[n mod 31] |
| Belgium | rijksregisternummer (11 digits) | 97 − (n mod 97); from 2000, of 2 and the 9 digits |
| Romania | CNP (13 digits) | weights 279146358279 mod 11, birth date |

Numbers with a weak check (BSN) or none that tells them from other numbers need a cue
(their name before them) or, in tool-call arguments, a key that names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

Validator = Callable[[re.Match[str]], bool]


def _date_ok(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


# --- UK National Insurance number -----------------------------------------------------------
_NINO_NOT_ALLOCATED = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}
NINO = re.compile(
    r"(?<![A-Za-z0-9])(?P<p>[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D](?![A-Za-z0-9])"
)


def nino_ok(match: re.Match[str]) -> bool:
    return match["p"] not in _NINO_NOT_ALLOCATED


# --- France: NIR ----------------------------------------------------------------------------
NIR = re.compile(
    r"(?<![\d])(?P<sex>[1-478])\s?(?P<yy>\d{2})\s?(?P<mm>\d{2})\s?(?P<dept>\d{2}|2[AB])\s?"
    r"(?P<commune>\d{3})\s?(?P<order>\d{3})\s?(?P<key>\d{2})(?![\d])"
)


def nir_ok(match: re.Match[str]) -> bool:
    month = int(match["mm"])
    if not (1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99):
        return False
    dept = match["dept"].replace("2A", "19").replace("2B", "18")
    number = int(match["sex"] + match["yy"] + match["mm"] + dept + match["commune"] + match["order"])
    return 97 - number % 97 == int(match["key"])


# --- Germany: Rentenversicherungsnummer ---------------------------------------------------------
RVNR = re.compile(
    r"(?<![A-Za-z0-9])(?P<area>\d{2})\s?(?P<dd>\d{2})(?P<mm>\d{2})(?P<yy>\d{2})\s?(?P<letter>[A-Z])\s?"
    r"(?P<serial>\d{2})(?P<check>\d)(?![A-Za-z0-9])"
)


def rvnr_ok(match: re.Match[str]) -> bool:
    day, month = int(match["dd"]), int(match["mm"])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return False
    digits = (
        match["area"]
        + match["dd"]
        + match["mm"]
        + match["yy"]
        + f"{ord(match['letter']) - 64:02d}"
        + match["serial"]
    )
    weights = (2, 1, 2, 5, 7, 1, 2, 1, 2, 1, 2, 1)
    total = sum(sum(divmod(int(d) * w, 10)) for d, w in zip(digits, weights, strict=True))
    return total % 10 == int(match["check"])


# --- Spain: DNI and NIE -------------------------------------------------------------------------
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
DNI = re.compile(r"(?<![A-Za-z0-9])(?P<prefix>[XYZ]-?)?(?P<number>\d{7,8})-?(?P<letter>[A-Z])(?![A-Za-z0-9])")


def dni_ok(match: re.Match[str]) -> bool:
    prefix = (match["prefix"] or "").strip("-")
    number = match["number"]
    if prefix:
        if len(number) != 7:
            return False
        number = str("XYZ".index(prefix)) + number
    elif len(number) != 8:
        return False
    return _DNI_LETTERS[int(number) % 23] == match["letter"]


# --- Italy: codice fiscale ------------------------------------------------------------------------
_CF_ODD = dict(
    zip(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8,
         12, 14, 16, 10, 22, 25, 24, 23],
        strict=True,
    )
)  # fmt: skip
_CF_DIGIT = "[0-9LMNPQRSTUV]"  # digits, or the letters that replace them for homonyms
CODICE_FISCALE = re.compile(
    rf"(?<![A-Za-z0-9])[A-Z]{{6}}{_CF_DIGIT}{{2}}[ABCDEHLMPRST]{_CF_DIGIT}{{2}}[A-Z]{_CF_DIGIT}{{3}}[A-Z](?![A-Za-z0-9])"
)


def codice_fiscale_ok(match: re.Match[str]) -> bool:
    code = match.group()
    total = 0
    for index, char in enumerate(code[:15]):
        if index % 2 == 0:  # odd positions, counting from 1
            total += _CF_ODD[char]
        else:
            total += int(char) if char.isdigit() else ord(char) - 65
    return chr(65 + total % 26) == code[15]


# --- Netherlands: BSN ---------------------------------------------------------------------------
BSN = re.compile(r"(?<![\d.])(?P<bsn>\d{4}\.?\d{2}\.?\d{3}|\d{8,9})(?![\d])")
BSN_CUE = re.compile(
    r"(?i)\b(?:bsn|burgerservicenummer|sofi(?:nummer)?|citizen service number)\b[^\n\d]{0,25}$"
)


def bsn_ok(match: re.Match[str]) -> bool:
    digits = match["bsn"].replace(".", "").zfill(9)
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) - int(digits[8])
    return total % 11 == 0 and digits != "000000000"


# --- Poland: PESEL --------------------------------------------------------------------------------
PESEL = re.compile(r"(?<![\d])(?P<yy>\d{2})(?P<mm>\d{2})(?P<dd>\d{2})\d{5}(?![\d])")
_PESEL_CENTURY = {0: 1900, 20: 2000, 40: 2100, 60: 2200, 80: 1800}


def pesel_ok(match: re.Match[str]) -> bool:
    digits = match.group()
    month = int(match["mm"])
    century = _PESEL_CENTURY[month // 20 * 20]
    if not _date_ok(century + int(match["yy"]), month % 20, int(match["dd"])):
        return False
    weights = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
    total = sum(int(d) * w for d, w in zip(digits[:10], weights, strict=True))
    return (10 - total % 10) % 10 == int(digits[10])


# --- Sweden: personnummer --------------------------------------------------------------------------
PERSONNUMMER = re.compile(
    r"(?<![\d-])(?P<cc>19|20)?(?P<yy>\d{2})(?P<mm>\d{2})(?P<dd>\d{2})(?P<sep>[-+])(?P<serial>\d{3})(?P<check>\d)(?![\d-])"
)


def personnummer_ok(match: re.Match[str]) -> bool:
    day = int(match["dd"])
    day = day - 60 if day > 60 else day  # samordningsnummer
    if not _date_ok(2000, int(match["mm"]), day):  # a leap year: 29 February is a day
        return False
    return _luhn(match["yy"] + match["mm"] + match["dd"] + match["serial"] + match["check"])


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


# --- Finland: HETU ---------------------------------------------------------------------------------
_HETU_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"
HETU = re.compile(
    r"(?<![A-Za-z0-9])(?P<dd>\d{2})(?P<mm>\d{2})(?P<yy>\d{2})(?P<century>[-+A-FU-Y])(?P<serial>\d{3})"
    r"(?P<check>[0-9A-FHJ-NPR-Y])(?![A-Za-z0-9])"
)


def hetu_ok(match: re.Match[str]) -> bool:
    if not _date_ok(2000, int(match["mm"]), int(match["dd"])):
        return False
    number = int(match["dd"] + match["mm"] + match["yy"] + match["serial"])
    return _HETU_CHECK[number % 31] == match["check"]


# --- Belgium: national register number ----------------------------------------------------------------
BELGIAN_NN = re.compile(
    r"(?<![\d.])(?P<yy>\d{2})\.?(?P<mm>\d{2})\.?(?P<dd>\d{2})[-.]?(?P<serial>\d{3})\.?(?P<check>\d{2})(?![\d])"
)


def belgian_nn_ok(match: re.Match[str]) -> bool:
    month, day = int(match["mm"]), int(match["dd"])
    # 00 is allowed (birth date partly unknown); +20/+40 on the month for bis numbers
    if (month > 12 or day > 31) and not (20 <= month <= 32 or 40 <= month <= 52):
        return False
    body = match["yy"] + match["mm"] + match["dd"] + match["serial"]
    check = int(match["check"])
    return 97 - int(body) % 97 == check or 97 - int("2" + body) % 97 == check


# --- Romania: CNP ----------------------------------------------------------------------------------------
CNP = re.compile(
    r"(?<![\d])(?P<s>[1-8])(?P<yy>\d{2})(?P<mm>\d{2})(?P<dd>\d{2})(?P<county>\d{2})\d{3}(?P<check>\d)(?![\d])"
)
_CNP_CENTURY = {"1": 1900, "2": 1900, "3": 1800, "4": 1800, "5": 2000, "6": 2000, "7": 1900, "8": 1900}


def cnp_ok(match: re.Match[str]) -> bool:
    if not _date_ok(_CNP_CENTURY[match["s"]] + int(match["yy"]), int(match["mm"]), int(match["dd"])):
        return False
    county = int(match["county"])
    if not (1 <= county <= 52 or county in (70, 80, 81, 82, 83)):
        return False
    digits = match.group()
    total = sum(int(d) * int(w) for d, w in zip(digits[:12], "279146358279", strict=True))
    check = total % 11
    return (1 if check == 10 else check) == int(match["check"])


NATIONAL_ID_PATTERNS: list[tuple[re.Pattern[str], Validator, re.Pattern[str] | None]] = [
    (NINO, nino_ok, None),
    (NIR, nir_ok, None),
    (RVNR, rvnr_ok, None),
    (DNI, dni_ok, None),
    (CODICE_FISCALE, codice_fiscale_ok, None),
    (BSN, bsn_ok, BSN_CUE),
    (PESEL, pesel_ok, None),
    (PERSONNUMMER, personnummer_ok, None),
    (HETU, hetu_ok, None),
    (BELGIAN_NN, belgian_nn_ok, None),
    (CNP, cnp_ok, None),
]

# Every pattern above but the codice fiscale's (whose digits may be letters) matches only where
# six digits run with at most one space, dot, + or - between two of them: a text without such a
# run needs only the codice fiscale's search. On prose the eleven searches, each tried at every
# character, cost ~90 µs a 316-character passage.
SIX_DIGITS = re.compile(r"\d(?:[\s.+-]?\d){5}")
WITHOUT_SIX_DIGITS = [entry for entry in NATIONAL_ID_PATTERNS if entry[0] is CODICE_FISCALE]


def national_id_ok(value: str) -> bool:
    """Whether the whole of ``value`` is one of the national ids above (its check passes)."""
    value = value.strip()
    for pattern, valid, _ in NATIONAL_ID_PATTERNS:
        match = pattern.fullmatch(value)
        if match and valid(match):
            return True
    return False
