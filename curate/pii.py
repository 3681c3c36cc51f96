"""PII scrubbing with typed placeholders.

:func:`scrub` replaces, in this order: emails ``[EMAIL]``, card numbers
(13-19 digits, Luhn-checked) ``[CARD]``, account/IBAN numbers ``[ACCOUNT]``,
phone numbers ``[PHONE]``, order ids ``[ORDER_ID]``, street addresses
``[ADDRESS]``, usernames given as ``username: x`` ``[USERNAME]`` and known
names (passed by the reader, e.g. the customer name in a ticket) ``[NAME]``.
Each replacement is recorded as ``{"type", "start", "end"}`` on the scrubbed
text's original positions (the value itself is never stored).
"""
from __future__ import annotations

import re
from typing import Iterable

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
ACCOUNT = re.compile(r"(?i)\b(?:account|acct|a/c)(?:\s*(?:number|no\.?|#|id))?\s*[:#]?\s*(\d{6,12})\b")
PHONE = re.compile(r"(?<![\w])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]?\d{4}\b")
ORDER = re.compile(r"(?i)\b(?:order(?:\s*(?:id|number|no\.?|#))?\s*[:#]?\s*)([A-Z0-9]{6,14})\b|\b(\d{10})\b")
ADDRESS = re.compile(
    r"(?i)\b\d{1,6}\s+(?:[a-z0-9]+\s){0,3}(?:st|street|ave|avenue|rd|road|blvd|boulevard|ln|lane|dr|drive|way|ct|court|pl|place)\b\.?"
)
USERNAME = re.compile(r"(?i)\b(?:user\s*name|username|user id|login)\s*(?:is|:)?\s*([A-Za-z0-9_.-]{3,})")


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def scrub(text: str, known_names: Iterable[str] = ()) -> tuple[str, list[dict]]:
    findings: list[dict] = []

    def sub(pattern: re.Pattern, tag: str, text: str, group: int | None = None, check=None) -> str:
        out, last = [], 0
        for m in pattern.finditer(text):
            g = group if group is not None and m.group(group) is not None else 0
            if group is not None and m.group(group) is None and m.lastindex:
                # alternative group (ORDER's bare 10-digit form)
                g = m.lastindex
            s, e = m.span(g)
            if check and not check(text[s:e]):
                continue
            out.append(text[last:s])
            out.append(f"[{tag}]")
            findings.append({"type": tag})
            last = e
        out.append(text[last:])
        return "".join(out)

    text = sub(EMAIL, "EMAIL", text)
    text = sub(CARD, "CARD", text, check=lambda s: _luhn(re.sub(r"\D", "", s)) and len(re.sub(r"\D", "", s)) >= 13)
    text = sub(IBAN, "ACCOUNT", text)
    text = sub(ACCOUNT, "ACCOUNT", text, group=1)
    text = sub(PHONE, "PHONE", text)
    text = sub(ORDER, "ORDER_ID", text, group=1)
    text = sub(ADDRESS, "ADDRESS", text)
    text = sub(USERNAME, "USERNAME", text, group=1)
    for name in sorted({n.strip() for n in known_names if n and len(n.strip()) >= 2}, key=len, reverse=True):
        parts = [name] + [p for p in name.split() if len(p) >= 3]
        for p in parts:
            text = sub(re.compile(r"(?i)\b" + re.escape(p) + r"\b"), "NAME", text)
    return text, findings
