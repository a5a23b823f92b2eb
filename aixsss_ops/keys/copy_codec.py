"""PostgreSQL's COPY text format, one row at a time: what ``COPY … TO STDOUT`` prints and ``COPY … FROM STDIN``
reads (tab-separated fields, ``\\N`` for NULL, backslash escapes)."""

from __future__ import annotations

import re
from collections.abc import Sequence

# the escapes COPY TO prints; other characters go through as they are
_ESC = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"})
_NEEDS_ESC = re.compile(r"[\\\t\n\r\b\f\v]").search
_UNESC = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_OCT = "01234567"
_HEX = "0123456789abcdefABCDEF"


def decode_field(field: str) -> str | None:
    """One field of a COPY text line (split at its tabs) as the value it stands for; ``\\N`` is None."""
    if field == "\\N":
        return None
    out, i, n = [], 0, len(field)
    while i < n:
        ch = field[i]
        if ch != "\\" or i + 1 == n:
            out.append(ch)
            i += 1
            continue
        nxt = field[i + 1]
        if nxt in _OCT:
            j = i + 1
            while j < n and j < i + 4 and field[j] in _OCT:
                j += 1
            out.append(chr(int(field[i + 1:j], 8)))
            i = j
        elif nxt == "x" and i + 2 < n and field[i + 2] in _HEX:
            j = i + 2
            while j < n and j < i + 4 and field[j] in _HEX:
                j += 1
            out.append(chr(int(field[i + 2:j], 16)))
            i = j
        else:
            out.append(_UNESC.get(nxt, nxt))
            i += 2
    return "".join(out)


def encode_line(fields: Sequence[str | None]) -> bytes:
    """One row of COPY text, exactly as ``COPY … TO STDOUT`` prints it (and ``COPY … FROM STDIN`` reads it)."""
    return ("\t".join("\\N" if f is None else f.translate(_ESC) if _NEEDS_ESC(f) else f for f in fields)
            + "\n").encode("utf-8", "surrogateescape")
