"""URL filtering (data.url_filter): domain block and allow lists for sources with a URL field.

A list file holds one domain a line; `#` starts a comment, blank lines are skipped, a leading
`*.` or `.` and a trailing `.` are dropped, case is ignored. A domain matches itself and its
subdomains (`example.com` matches `www.example.com`). A URL's domain is its host (scheme,
user, port and path ignored; a URL without a scheme is read as `//` + URL).

Per document, in this order: no URL (field missing, null, empty or without a host): counted
as `missing_url`, dropped or kept by `missing_url`; the domain on a block list: dropped,
counted under the first block list (in order) that holds it; allow lists given and the domain
on none of them: dropped as `not_allowed`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .config import UrlFilterSection

MISSING, NOT_ALLOWED, CHECKED = "missing_url", "not_allowed", "checked"
BLOCKED = "blocked:"
"""Prefix of the count of a block list (`blocked:<list file>`)."""


def read_domains(path: Path) -> list[str]:
    """The domains of a list file (see the module doc)."""
    domains = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            domain = line.split("#", 1)[0].strip().lower().removeprefix("*.").strip(".")
            if domain:
                domains.append(domain)
    return domains


def url_domain(url: object) -> str | None:
    """The host of a URL, lowercased; None when there is none."""
    if not isinstance(url, str) or not url.strip():
        return None
    url = url.strip()
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname
    except ValueError:  # a malformed port or IPv6 literal
        return None
    return host.strip(".") if host else None


def _suffixes(domain: str) -> list[str]:
    """The domain and each parent domain: a.b.c, b.c, c."""
    out = [domain]
    start = domain.find(".")
    while start >= 0:
        out.append(domain[start + 1 :])
        start = domain.find(".", start + 1)
    return out


class UrlFilter:
    """The lists of data.url_filter; `verdict(url)` is (keep, count key)."""

    def __init__(self, settings: UrlFilterSection):
        self.keep_missing = settings.missing_url == "keep"
        self._blocked: dict[str, str] = {}  # domain: count key of the first list holding it
        for path in settings.block_lists:
            key = BLOCKED + str(path)
            for domain in read_domains(Path(path)):
                self._blocked.setdefault(domain, key)
        self._allowed: set[str] | None = None
        if settings.allow_lists:
            self._allowed = {d for p in settings.allow_lists for d in read_domains(Path(p))}

    def verdict(self, url: object) -> tuple[bool, str | None]:
        """Whether the document stays, and what it is counted as (None: nothing to count)."""
        domain = url_domain(url)
        if domain is None:
            return self.keep_missing, MISSING
        suffixes = _suffixes(domain)
        for suffix in suffixes:
            key = self._blocked.get(suffix)
            if key is not None:
                return False, key
        if self._allowed is not None and not any(s in self._allowed for s in suffixes):
            return False, NOT_ALLOWED
        return True, None


def url_filter(settings: UrlFilterSection) -> UrlFilter | None:
    """The filter of these settings, or None when no list is given."""
    if not settings.block_lists and not settings.allow_lists:
        return None
    return UrlFilter(settings)
