"""Free text that readers type (comments, flag reasons), made safe to store, export and print.

Readers are the untrusted side of a study. What they type is

* capped at :data:`MAX_TEXT` characters (the app, :meth:`reader_study.store.Store.submit` and a
  database ``CHECK`` all hold the line: a 20 MB comment would otherwise be stored twice, once in the
  append-only audit log, and break the export's CSV reader);
* cleaned by :func:`clean`: NUL and the other control characters (except tab and newline) and the
  bidirectional formatting characters (``U+202A``-``U+202E``, ``U+2066``-``U+2069``, ``U+200E``,
  ``U+200F``, ``U+061C``), which can make a comment read differently from what it holds
  ("Trojan Source");
* neutralised in CSV exports by :func:`spreadsheet_safe`: a cell that starts with ``=``, ``+``,
  ``-``, ``@``, tab or carriage return is a formula to Excel, LibreOffice and Google Sheets, so it
  gets a leading apostrophe (OWASP's "CSV injection" advice);
* stripped of terminal escape sequences by :func:`printable` before ``reader-study status``
  prints it.
"""

from __future__ import annotations

import re
import unicodedata

MAX_TEXT = 2000
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional formatting characters.
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
# ESC-introduced sequences (CSI ``ESC [ ... final``, OSC ``ESC ] ... BEL/ST``, two-byte ``ESC x``)
# and the 8-bit CSI; removed whole, so that no parameter bytes are left to show as garbage.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]"
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def clean(text: str | None) -> str | None:
    """``text`` without unsafe characters, line ends as ``\\n``, stripped; None when empty."""
    if text is None:
        return None
    out = _UNSAFE.sub("", unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")))
    return out.strip() or None


def too_long(text: str | None) -> bool:
    return text is not None and len(text) > MAX_TEXT


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, with a leading apostrophe; any other
    value unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def printable(text: object) -> str:
    """``str(text)`` with terminal escape sequences and control characters removed (one line)."""
    out = _ESCAPES.sub("", str(text))
    return _UNSAFE.sub("", out.replace("\n", " ").replace("\t", " "))
