"""Text cleaning: Unicode normal form, control characters, whitespace (each can be turned off)."""

from __future__ import annotations

import re
import unicodedata

from .config import CleanSection

# C0 and C1 control characters except tab and newline (CR is handled as a line break), plus
# the byte-order mark / zero-width no-break space.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t\f\v\u00a0\u3000]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{3,}")


def clean_text(text: str, settings: CleanSection) -> str:
    """The cleaned document (possibly empty)."""
    if settings.unicode_normalization and not unicodedata.is_normalized(
        settings.unicode_normalization, text
    ):
        text = unicodedata.normalize(settings.unicode_normalization, text)
    if settings.normalize_whitespace and "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if settings.remove_control_characters:
        text = _CONTROL.sub("", text)
    if settings.normalize_whitespace:
        text = _TRAILING_SPACE.sub("", text)
        text = _BLANK_RUN.sub("\n\n", text)
        text = text.strip("\n")
    return text
