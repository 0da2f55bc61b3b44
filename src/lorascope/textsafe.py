"""Untrusted text made safe for human output (terminal text and Markdown); JSON output never uses it.

Names, paths, metadata and messages come from files anyone can write.  Printed raw, an ESC or CSI
sequence in a layer name rewrites the terminal (colours, cursor moves, window titles, hidden lines),
a newline forges a report line, a bidirectional override reorders what is shown, and a lone
surrogate (what Python makes of a non-UTF-8 byte in a file name) makes `print` raise
UnicodeEncodeError.  `clean` shows every such character as an escape, the way Python's `repr`
does (``\\n``, ``\\x1b``, ``\\u202e``, ``\\udc80``); printable text, spaces and non-ASCII
letters stay as they are.  A backslash is not doubled, so ``a\\x1b`` may be four printable
characters or a, ESC: the human views are for reading; the JSON views (json escapes by itself) are
exact.

`md_text` and `md_code` also keep text from being read as Markdown: table cells, emphasis, links,
HTML.
"""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~&])")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def clean(text: object) -> str:
    """`str(text)` with every non-printable character (controls, ESC, newlines, tabs, format and
    bidi characters, lone surrogates, unassigned code points) written as a backslash escape."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():  # the common case: one C-level scan
        return s
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in s)


def md_text(text: object) -> str:
    """`clean`, then Markdown's special characters backslash-escaped (safe in a table cell)."""
    return _MD_SPECIAL.sub(r"\\\1", clean(text))


def md_code(text: object) -> str:
    """`clean` text as an inline code span that survives a table: the fence is one backtick longer
    than the longest run inside, and `|` is escaped (GFM splits table cells before code spans)."""
    s = clean(text).replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"
