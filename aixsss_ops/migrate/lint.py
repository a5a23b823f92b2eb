"""Lint rules for blue/green deploys: statements that break the running color or lose data.

While a new release migrates, the old color keeps serving with the old code, so a migration
must stay compatible with it: no dropping or renaming what it reads, no type changes, no new
NOT NULL it does not fill, no long write locks (plain CREATE INDEX on a large table).
Tables created in the same migration are exempt: nothing uses them yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from aixsss_ops.migrate.layout import Migration
from aixsss_ops.migrate.statements import Statement, needs_no_transaction, split

ERROR = "error"  # deploy refuses without --allow-destructive
WARNING = "warning"  # shown, does not block

LARGE_TABLE_ROWS = 100_000  # estimated rows above which a plain CREATE INDEX counts as a long write lock

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_STRING = re.compile(r"'(?:[^']|'')*'")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$.*?\$\1\$", re.S)

_CREATE_TABLE = re.compile(rf"^CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+"
                           rf"(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_QNAME})", re.I)
_DROP = re.compile(r"^DROP\s+(?P<what>TABLE|SCHEMA|VIEW|MATERIALIZED\s+VIEW)\s+(?:IF\s+EXISTS\s+)?(?P<names>.*)$",
                   re.I | re.S)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(?P<names>{_QNAME}(?:\s*,\s*{_QNAME})*)", re.I)
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<name>{_QNAME})\s*\*?\s+(?P<actions>.*)$",
                          re.I | re.S)
_ALTER_TYPE_RENAME = re.compile(rf"^ALTER\s+TYPE\s+(?P<name>{_QNAME})\s+RENAME\s+(?P<what>VALUE|TO)\b", re.I)
_CREATE_INDEX = re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?P<concurrently>CONCURRENTLY\s+)?.*?\bON\s+(?:ONLY\s+)?"
                           rf"(?P<table>{_QNAME})", re.I | re.S)

_A_DROP_COLUMN = re.compile(rf"^DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(?!CONSTRAINT\b)(?P<col>{_IDENT})", re.I)
_A_RENAME = re.compile(rf"^RENAME\s+(?:(?:COLUMN\s+)?(?!CONSTRAINT\b|TO\b)(?P<col>{_IDENT})\s+)?TO\s+(?P<new>{_IDENT})",
                       re.I)
_A_TYPE = re.compile(rf"^ALTER\s+(?:COLUMN\s+)?(?P<col>{_IDENT})\s+(?:SET\s+DATA\s+)?TYPE\b", re.I)
_A_SET_NOT_NULL = re.compile(rf"^ALTER\s+(?:COLUMN\s+)?(?P<col>{_IDENT})\s+SET\s+NOT\s+NULL\b", re.I)
_A_ADD_COLUMN = re.compile(rf"^ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?!(?:CONSTRAINT|PRIMARY|UNIQUE|FOREIGN|CHECK|"
                           rf"EXCLUDE)\b)(?P<col>{_IDENT})\s+(?P<rest>.*)$", re.I | re.S)


@dataclass(frozen=True)
class Finding:
    migration: str
    rule: str
    severity: str
    line: int
    message: str
    statement: str

    def to_dict(self) -> dict:
        return asdict(self)


def unquote(qname: str) -> str:
    """The last part of a (schema-qualified) identifier as PostgreSQL stores it."""
    parts = re.findall(_IDENT, qname)
    last = parts[-1] if parts else qname
    if last.startswith('"'):
        return last[1:-1].replace('""', '"')
    return last.lower()


def _code_only(text: str) -> str:
    return _STRING.sub("''", _DOLLAR.sub("$$", text))


def _split_actions(actions: str) -> list[str]:
    """ALTER TABLE sub-commands, split at top-level commas."""
    parts, depth, quoted, cur = [], 0, False, []
    for ch in actions:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _short(stmt: Statement, limit: int = 160) -> str:
    s = stmt.normalized
    return s if len(s) <= limit else s[: limit - 1] + "…"


def lint_script(name: str, sql: str, table_rows: Mapping[str, float] | None = None) -> list[Finding]:
    """Findings for one migration. ``table_rows``: estimated rows per existing table (from the DB), if known."""
    statements = split(sql)
    created: set[str] = set()
    findings: list[Finding] = []

    def add(stmt: Statement, rule: str, message: str, severity: str = ERROR) -> None:
        findings.append(Finding(name, rule, severity, stmt.line, message, _short(stmt)))

    for stmt in statements:
        code = _code_only(stmt.text)
        if m := _CREATE_TABLE.match(code):
            created.add(unquote(m["name"]))
            continue
        if m := _DROP.match(code):
            what = " ".join(m["what"].upper().split())
            names = re.split(r"\b(?:CASCADE|RESTRICT)\b", m["names"], flags=re.I)[0]
            targets = [unquote(n) for n in re.findall(_QNAME, names)]
            targets = [t for t in targets if t not in created]
            if targets:
                rule = "drop-table" if what == "TABLE" else f"drop-{what.lower().replace(' ', '-')}"
                add(stmt, rule, f"DROP {what} {', '.join(targets)}: loses data and breaks the running color, "
                    "which still uses it")
            continue
        if m := _TRUNCATE.match(code):
            add(stmt, "truncate", "TRUNCATE deletes every row")
            continue
        if m := _ALTER_TYPE_RENAME.match(code):
            add(stmt, "rename", f"renaming type {unquote(m['name'])} (or a value of it) breaks the running color")
            continue
        if m := _CREATE_INDEX.match(code):
            table = unquote(m["table"])
            if m["concurrently"] or table in created:
                if m["concurrently"] and len(statements) > 1 and needs_no_transaction(stmt):
                    add(stmt, "concurrently-in-multi-statement",
                        "CREATE INDEX CONCURRENTLY cannot run inside a transaction block: put it in a migration of its own",
                        WARNING)
                continue
            rows = None if table_rows is None else table_rows.get(table)
            if table_rows is None:
                add(stmt, "index-not-concurrent",
                    f"CREATE INDEX on existing table {table} without CONCURRENTLY blocks writes while it builds "
                    "(size unknown offline; a problem on large tables)", WARNING)
            elif rows is not None and rows >= LARGE_TABLE_ROWS:
                add(stmt, "index-not-concurrent",
                    f"CREATE INDEX on {table} (~{int(rows)} rows) without CONCURRENTLY blocks writes while it builds")
            continue
        if m := _ALTER_TABLE.match(code):
            table = unquote(m["name"])
            if table in created:
                continue
            for action in _split_actions(m["actions"]):
                if a := _A_DROP_COLUMN.match(action):
                    add(stmt, "drop-column",
                        f"DROP COLUMN {table}.{unquote(a['col'])}: loses data and breaks the running color")
                elif a := _A_RENAME.match(action):
                    what = f"column {table}.{unquote(a['col'])}" if a["col"] else f"table {table}"
                    add(stmt, "rename", f"renaming {what} to {unquote(a['new'])} breaks the running color")
                elif a := _A_TYPE.match(action):
                    add(stmt, "type-change", f"changing the type of {table}.{unquote(a['col'])} rewrites the table and "
                        "can break the running color or lose data")
                elif a := _A_SET_NOT_NULL.match(action):
                    add(stmt, "not-null", f"SET NOT NULL on {table}.{unquote(a['col'])}: fails on existing NULLs and "
                        "the running color may still write NULL")
                elif a := _A_ADD_COLUMN.match(action):
                    rest = a["rest"].upper()
                    if re.search(r"\bNOT\s+NULL\b", rest) and not re.search(r"\bDEFAULT\b|\bGENERATED\b", rest):
                        add(stmt, "not-null", f"ADD COLUMN {table}.{unquote(a['col'])} NOT NULL without DEFAULT fails on a "
                            "table with rows, and the running color does not fill it")
    return findings


def lint(migrations: Iterable[Migration], table_rows: Mapping[str, float] | None = None) -> list[Finding]:
    out: list[Finding] = []
    for m in migrations:
        out.extend(lint_script(m.name, m.sql, table_rows))
    return out


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == ERROR]
