"""PII scrubbing with typed placeholders — the one place ingestion removes personal data.

:func:`scrub` replaces, in this order:

1. **known values** the reader passes as ``(TYPE, value)`` pairs (the customer
   name of a ticket, ABCD's scenario: name, username, email, phone, order id,
   street address, zip code, account id) → ``[TYPE]``. Matched
   case-insensitively on word boundaries; a known name also matches each of
   its words of ≥ 3 letters ("Crystal" alone); a known phone matches its digits
   with any separators. Known values go first so they get their true type.
2. generic patterns, only tried when the text has a digit, an ``@`` or one
   of the keywords below (a cheap pre-check; most chat text has none):

   ============  =================================================================
   ``[EMAIL]``   ``name@host.tld``
   ``[CARD]``    13–19 digits (spaces/dashes allowed) passing the Luhn check
   ``[ACCOUNT]`` IBAN, or ``account/acct/a/c (number|no|#|id)`` + 6–12 digits
   ``[PHONE]``   ``(977) 625-2661``, ``977-625-2661``, ``+44 20 7946 0958`` …
                 (groups of digits with separators; a plain number is not a phone)
   ``[ORDER_ID]`` ``order (id|number|no|#)`` + a 6–14 char code containing a
                 digit, or a bare 10-digit number
   ``[ADDRESS]`` house number + up to 3 words + a street suffix (st, ave, rd …)
   ``[USERNAME]`` ``username/login/user id`` then ``:`` or ``is`` and a handle
                 with a digit, ``_`` or ``.`` (or any handle after ``:``)
   ``[NAME]``    ``my name is`` / ``name's`` + one or two Capitalised words
   ============  =================================================================

Amounts, percentages, dates and small counts ("charged 1.5% extra",
"£100", "2 days ago") are never PII. Each replacement is recorded as
``{"type": TYPE}`` (the value itself is never stored).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
ACCOUNT = re.compile(r"(?i)\b(?:account|acct|a/c)(?:\s*(?:number|no\.?|#|id))?\s*(?:is\s*)?[:#]?\s*(\d{6,12})\b")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)\s?\d{3,4}[ .-]?\d{4}|\d{3}[ .-]\d{3}[ .-]?\d{4}"
    r"|\+\d{1,3}[ .-]?\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4})\b"
)
ORDER = re.compile(
    r"(?i)\border(?:\s*(?:id|number|no\.?|#))?\s*(?:is\s*)?[:#]?\s*((?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{5,13})\b|(?<![\d.,])\b(\d{10})\b(?![.,]\d)"
)
ADDRESS = re.compile(  # a full stop is kept unless it belongs to an abbreviation ("St.")
    r"(?i)\b\d{1,6}\s+(?:[a-z0-9]+\s){0,3}"
    r"(?:(?:street|avenue|road|boulevard|lane|drive|way|court|place)\b|(?:st|ave|rd|blvd|ln|dr|ct|pl)\b\.?)"
)
USERNAME = re.compile(
    r"(?i)\b(?:user\s*name|user\s*id|login)\s*(?::\s*([A-Za-z0-9_.-]{3,})|(?:is)\s+((?=[A-Za-z0-9_.-]*[\d_.])[A-Za-z0-9_.-]{3,}))"
)
MY_NAME = re.compile(r"\b(?:[Mm]y name is|[Nn]ame's|[Mm]y name's)\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)\b")
DIGIT = re.compile(r"\d")

# (pattern, tag, group, needs): a pattern runs only when the text has what it
# needs — "digit", "@", or a keyword (lower-cased substring) — cheap checks
# that skip most of the regex work on ordinary chat text.
DIGIT_PATTERNS = (
    (CARD, "CARD", "luhn"),
    (IBAN, "ACCOUNT", None),
    (ACCOUNT, "ACCOUNT", 1),
    (PHONE, "PHONE", None),
    (ORDER, "ORDER_ID", (1, 2)),
    (ADDRESS, "ADDRESS", None),
)
KNOWN_TYPES = ("NAME", "USERNAME", "EMAIL", "PHONE", "ORDER_ID", "ADDRESS", "ZIP", "ACCOUNT", "CARD")
_NONDIGIT = re.compile(r"\D")


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def _card_ok(s: str) -> bool:
    d = _NONDIGIT.sub("", s)
    return len(d) >= 13 and _luhn(d)


@lru_cache(maxsize=4096)
def _known_pattern(tag: str, value: str) -> re.Pattern | None:
    v = value.strip()
    if len(v) < 2:
        return None
    if tag == "PHONE":
        digits = _NONDIGIT.sub("", v)
        if len(digits) < 7:
            return None
        return re.compile(r"(?<![\d(+])[(+]*" + r"[\s().+-]*".join(digits) + r"(?!\d)")
    alts = [re.escape(v)]
    if tag == "NAME":
        alts += [re.escape(p) for p in v.split() if len(p) >= 3 and p.isalpha()]
    elif tag == "ADDRESS":
        alts = [re.escape(" ".join(v.split())).replace(r"\ ", r"\s+")]
    return re.compile(r"(?i)(?<![\w@])(?:" + "|".join(alts) + r")(?![\w@])")


def _sub(pattern: re.Pattern, tag: str, text: str, findings: list[dict], group=None, check=None) -> str:
    m = pattern.search(text)
    if m is None:  # the common case: one scan, no match objects iterated
        return text
    out: list[str] = []
    last = 0
    for m in pattern.finditer(text, m.start()):
        if isinstance(group, tuple):
            g = next((i for i in group if m.group(i) is not None), 0)
        else:
            g = group or 0
        s, e = m.span(g)
        if check == "luhn" and not _card_ok(text[s:e]):
            continue
        out.append(text[last:s])
        out.append(f"[{tag}]")
        findings.append({"type": tag})
        last = e
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _has_ascii_digit(text: str) -> bool:
    """``DIGIT.search(text)`` for an ASCII ``text``, by ten C substring scans (faster than the regex)."""
    for d in "0123456789":
        if d in text:
            return True
    return False


def _username_at_keyword(text: str, low: str) -> bool:
    """Whether USERNAME matches anywhere in an ASCII ``text``: a match starts with the keyword
    ``user`` or ``login``, so it is tried only where ``low`` (= ``text.lower()``) has one."""
    for kw in ("login", "user"):
        i = low.find(kw)
        while i >= 0:
            if USERNAME.match(text, i):
                return True
            i = low.find(kw, i + 1)
    return False


def needs_scrub(text: str) -> bool:
    """False only when ``scrub(text)`` (no known values) is sure to return ``text`` unchanged with
    no findings: ASCII text without an ``@``, a digit or the keywords ``login``/``user``/``name``
    (the same cheap checks :func:`scrub` starts with). Most chat text; the ingest skips it."""
    if not text.isascii() or "@" in text or _has_ascii_digit(text):
        return True
    low = text.lower()
    return "login" in low or "user" in low or "name" in low


def scrub(
    text: str,
    known_names: Iterable[str] = (),
    known: Iterable[tuple[str, str]] = (),
) -> tuple[str, list[dict]]:
    """Return ``(scrubbed text, findings)``; ``findings`` is one ``{"type"}`` per replacement.

    ``known_names`` are shorthand for ``("NAME", name)`` pairs in ``known``.
    """
    findings: list[dict] = []
    if known_names or known:
        pairs = [("NAME", n) for n in known_names if n] + [(t, v) for t, v in known if v]
        # longest first, so "6821 1st ave" wins over a shorter value inside it
        for tag, value in sorted(set(pairs), key=lambda p: len(p[1]), reverse=True):
            pat = _known_pattern(tag, str(value))
            if pat is not None:
                text = _sub(pat, tag, text, findings)
    if "@" in text:
        text = _sub(EMAIL, "EMAIL", text, findings)
    ascii_ = text.isascii()  # O(1) in CPython; ASCII text allows the cheaper exact checks below
    if (_has_ascii_digit(text) if ascii_ else DIGIT.search(text) is not None):
        for pattern, tag, group in DIGIT_PATTERNS:
            if group == "luhn":
                text = _sub(pattern, tag, text, findings, check="luhn")
            else:
                text = _sub(pattern, tag, text, findings, group=group)
    low = text.lower()
    if ("login" in low or "user" in low) and (not ascii_ or _username_at_keyword(text, low)):
        text = _sub(USERNAME, "USERNAME", text, findings, group=(1, 2))
    if "name" in low:
        text = _sub(MY_NAME, "NAME", text, findings, group=1)
    return text, findings
