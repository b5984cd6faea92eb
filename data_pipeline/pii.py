"""PII replacement (data.pii): e-mail addresses, IP addresses and phone numbers become
placeholders, each kind counted.

Patterned on datatrove's PIIFormatter (its e-mail pattern; only public IP addresses replaced,
by default), with phone numbers added and stricter edges: a match must not continue a longer
dotted, coloned or alphanumeric token, so version numbers (3.11.4, v1.2.3.4, 1.2.3.4.5),
dotted identifiers (os.path.join), dates, ISBNs and floats survive. A four-part dotted number
(`1.2.3.4`) is a valid IPv4 address and is replaced when public, as datatrove does: nothing
in the text tells it from a version number.

Order of the kinds: e-mail (its domain may be an IP literal), IPv4, IPv6, phone.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import re
from collections.abc import Callable

from .config import PiiSection

KINDS = ("email", "ip", "phone")

# datatrove's pattern (RFC 5322's, simplified)
_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[A-Za-z0-9]"
    r"(?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|"
    r"2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|"
    r"[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# not a part of a longer dotted token: 1.2.3.4.5 and v1.2.3.4 are kept whole
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]{3,39}(?![\w:.])")
# +country code: groups of digits with separators (at least three groups), or 8-15 digits.
# The `+` comes first and the look-behind after it, so the scan looks for `+` only.
_PHONE_INTERNATIONAL = re.compile(
    r"\+(?<![\w+]\+)(?:\d{1,3}(?:[ .-]?\(\d{1,4}\)|[ .-]\d{1,8}){2,6}|\d{8,15})"
    r"(?![\w]|[.-]?\d)"
)
# North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199
_PHONE_NORTH_AMERICA = re.compile(
    r"(?<![\w+.-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w]|[.-]\d)"
)
_DIGIT = re.compile(r"\d")
# What a text must hold for each pattern to match (searched first: a pattern that starts
# with a look-behind is tried at every position, these find their first character fast)
_MAY_HOLD_IPV4 = re.compile(r"\d\.\d+\.\d+\.\d")
_MAY_HOLD_NORTH_AMERICAN = re.compile(r"\d{3}[.-]\d{4}")


def _ip_kept(address: str, public_only: bool) -> bool:
    """Whether a candidate stays: not an address, or (with public_only) not a public one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return public_only and not ip.is_global


def _ipv6_kept(address: str, public_only: bool) -> bool:
    # a few hex groups with colons are often code (a::b) or times: at least three groups
    if sum(1 for group in address.split(":") if group) < 3:
        return True
    return _ip_kept(address, public_only)


def _phone_kept(number: str) -> bool:
    digits = len(_DIGIT.findall(number))
    return not 8 <= digits <= 15


class PiiReplacer:
    """The replacements of one data.pii setting; `replace(text, counts)` returns the text with
    each enabled kind replaced and adds the replacements to `counts` (kind: number)."""

    def __init__(self, settings: PiiSection):
        public_only = settings.public_ips_only
        steps: list[tuple[str, re.Pattern, str, Callable[[str], bool] | None, Callable]] = []
        # (kind, pattern, placeholder, kept: whether a match stays, worth_trying: a cheap
        # test of the text before the pattern)
        if settings.email:
            steps.append(("email", _EMAIL, settings.email_placeholder, None, _has_at))
        if settings.ip:
            # partials of module functions: the replacer is pickled to the workers
            ipv4_kept = functools.partial(_ip_kept, public_only=public_only)
            ipv6_kept = functools.partial(_ipv6_kept, public_only=public_only)
            steps.append(("ip", _IPV4, settings.ip_placeholder, ipv4_kept, _MAY_HOLD_IPV4.search))
            steps.append(("ip", _IPV6, settings.ip_placeholder, ipv6_kept, _may_hold_ipv6))
        if settings.phone:
            for pattern, worth_trying in (
                (_PHONE_INTERNATIONAL, _has_plus),
                (_PHONE_NORTH_AMERICA, _MAY_HOLD_NORTH_AMERICAN.search),
            ):
                steps.append(
                    ("phone", pattern, settings.phone_placeholder, _phone_kept, worth_trying)
                )
        self._steps = steps

    def replace(self, text: str, counts: collections.Counter[str]) -> str:
        for kind, pattern, placeholder, kept, worth_trying in self._steps:
            if not worth_trying(text):
                continue
            if kept is None:
                text, replaced = pattern.subn(placeholder, text)
            else:
                replaced = 0

                def substitute(match: re.Match, kept=kept, placeholder=placeholder) -> str:
                    nonlocal replaced
                    if kept(match.group(0)):
                        return match.group(0)
                    replaced += 1
                    return placeholder

                text = pattern.sub(substitute, text)
            if replaced:
                counts[kind] += replaced
        return text


def _has_plus(text: str) -> bool:
    return "+" in text


def _has_at(text: str) -> bool:
    return "@" in text


def _may_hold_ipv6(text: str) -> bool:
    """An IPv6 address has `::` or seven colons (a cheap test before the pattern)."""
    return "::" in text or text.count(":") >= 7


def pii_replacer(settings: PiiSection) -> PiiReplacer | None:
    """The replacer of these settings, or None when data.pii is off (or every kind is)."""
    if not settings.enabled or not (settings.email or settings.ip or settings.phone):
        return None
    return PiiReplacer(settings)
