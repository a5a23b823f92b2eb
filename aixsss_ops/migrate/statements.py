"""Splitting a PostgreSQL script into statements, for lint and for naming a failing statement.

Handles ``--`` and nested ``/* */`` comments, '' strings (E'' with backslash escapes),
"quoted identifiers", $tag$ dollar quotes and ``BEGIN ATOMIC ... END`` function bodies.
The script itself is always sent to the server whole; this split is only for reading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_TX_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|END|ABORT|START\s+TRANSACTION|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b", re.I
)
# statements PostgreSQL refuses to run inside a transaction block
_NON_TX = re.compile(
    r"\bCONCURRENTLY\b|^\s*(VACUUM|CREATE\s+DATABASE|DROP\s+DATABASE|CREATE\s+TABLESPACE|DROP\s+TABLESPACE"
    r"|ALTER\s+SYSTEM|REINDEX\s+(SYSTEM|DATABASE))\b",
    re.I,
)


@dataclass(frozen=True)
class Statement:
    text: str  # the statement with comments replaced by spaces, stripped, without the ';'
    start: int  # character offset in the script (0-based) of the statement's first character
    end: int  # offset just past the statement (before its ';')
    line: int  # 1-based line of the first character

    @property
    def normalized(self) -> str:
        """Upper-case keywords are not needed: one line, single spaces (quoted parts kept as written)."""
        return " ".join(self.text.split())


def _scan(script: str) -> tuple[str, list[tuple[int, int]]]:
    """The script with comments blanked out, and the (start, end) spans of top-level statements."""
    out = list(script)
    spans: list[tuple[int, int]] = []
    i, n, start = 0, len(script), 0
    atomic_depth = 0
    prev_word = ""
    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            j = script.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
            continue
        if c == "/" and script.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if script.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif script.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
            continue
        if c == "'":
            escapes = i > 0 and script[i - 1] in "eE" and (i < 2 or not (script[i - 2].isalnum() or script[i - 2] == "_"))
            j = i + 1
            while j < n:
                if escapes and script[j] == "\\":
                    j += 2
                    continue
                if script[j] == "'":
                    if j + 1 < n and script[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c == '"':
            j = script.find('"', i + 1)
            while j >= 0 and j + 1 < n and script[j + 1] == '"':
                j = script.find('"', j + 2)
            i = n if j < 0 else j + 1
            continue
        if c == "$":
            m = _DOLLAR_TAG.match(script, i)
            if m and not (i > 0 and (script[i - 1].isalnum() or script[i - 1] == "_")):
                close = script.find(m.group(0), m.end())
                i = n if close < 0 else close + len(m.group(0))
                continue
        if c.isalpha() or c == "_":
            m = _WORD.match(script, i)
            word = m.group(0).upper()
            if word == "ATOMIC" and prev_word == "BEGIN" or atomic_depth and word == "CASE":
                atomic_depth += 1
            elif atomic_depth and word == "END":
                atomic_depth -= 1
            prev_word = word
            i = m.end()
            continue
        if c == ";" and not atomic_depth:
            spans.append((start, i))
            start = i + 1
        i += 1
    spans.append((start, n))
    return "".join(out), spans


def split(script: str) -> list[Statement]:
    """The non-empty statements of ``script`` in order."""
    blanked, spans = _scan(script)
    result = []
    for s, e in spans:
        text = blanked[s:e]
        stripped = text.strip()
        if not stripped:
            continue
        first = s + (len(text) - len(text.lstrip()))
        result.append(Statement(stripped, first, e, script.count("\n", 0, first) + 1))
    return result


def is_transaction_control(stmt: Statement) -> bool:
    return bool(_TX_CONTROL.match(stmt.text))


def needs_no_transaction(stmt: Statement) -> bool:
    """Statements that fail inside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...)."""
    return bool(_NON_TX.search(stmt.text))


def runs_in_one_transaction(statements: list[Statement]) -> bool:
    """Whether the script can be applied atomically together with its ledger record."""
    return not any(is_transaction_control(s) or needs_no_transaction(s) for s in statements)


def statement_at(statements: list[Statement], position: int) -> Statement | None:
    """The statement containing the 0-based character ``position`` (an error position from the server)."""
    for s in statements:
        if s.start <= position <= s.end:
            return s
    return None
