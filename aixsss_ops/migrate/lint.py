"""Lint rules for blue/green deploys: statements that break the running color or lose data.

While a new release migrates, the old color keeps serving with the old code, so a migration
must stay compatible with it: no dropping or renaming what it reads, no type changes, no new
NOT NULL it does not fill, no long write locks (plain CREATE INDEX on a large table).
Tables created in the same migration are exempt: nothing uses them yet. So, when a deploy lints its batch of
pending migrations, are the tables, columns, types and views an earlier migration of the same batch creates: they
do not exist for the running color (their findings are notes, severity ``info``); and so is everything when no
migration was applied to the database yet: no color runs on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace

from aixsss_ops.migrate.layout import Migration
from aixsss_ops.migrate.statements import Statement, needs_no_transaction, split

ERROR = "error"  # deploy refuses without --allow-destructive
WARNING = "warning"  # shown, does not block
INFO = "info"  # a note: the statement is no hazard where it runs (what it changes is new, or nothing runs yet)

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
_CREATE_TYPE = re.compile(rf"^CREATE\s+TYPE\s+(?P<name>{_QNAME})", re.I)
_CREATE_VIEW = re.compile(rf"^CREATE\s+(?:(?:TEMP|TEMPORARY|RECURSIVE)\s+)*(?:MATERIALIZED\s+)?VIEW\s+"
                          rf"(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_QNAME})", re.I)
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


@dataclass
class Batch:
    """What the migrations linted so far in one batch of pending migrations created: the running color knows none
    of it, so statements on it are no blue/green hazard."""

    relations: set[str] = field(default_factory=set)  # tables and views
    columns: set[tuple[str, str]] = field(default_factory=set)  # (table, column) added to a table that existed
    types: set[str] = field(default_factory=set)


_NEW = "it is created by the pending migrations applied together with this one, so the running color does not use it"


def lint_script(name: str, sql: str, table_rows: Mapping[str, float] | None = None,
                batch: Batch | None = None) -> list[Finding]:
    """Findings for one migration. ``table_rows``: estimated rows per existing table (from the DB), if known.
    ``batch``: what earlier pending migrations of the same deploy create (findings on it are ``info``); this
    migration's own creations are added to it."""
    statements = split(sql)
    created: set[str] = set()
    earlier = batch if batch is not None else Batch()
    new_columns: set[tuple[str, str]] = set(earlier.columns)  # added by this migration or an earlier one of the batch
    new_types: set[str] = set()
    findings: list[Finding] = []

    def add(stmt: Statement, rule: str, message: str, severity: str = ERROR) -> None:
        findings.append(Finding(name, rule, severity, stmt.line, message, _short(stmt)))

    def note(stmt: Statement, rule: str, message: str) -> None:
        add(stmt, rule, f"{message} — not a hazard here: {_NEW}", INFO)

    for stmt in statements:
        code = _code_only(stmt.text)
        if m := _CREATE_TABLE.match(code):
            created.add(unquote(m["name"]))
            continue
        if m := _CREATE_TYPE.match(code):
            new_types.add(unquote(m["name"]))
            continue
        if m := _CREATE_VIEW.match(code):
            created.add(unquote(m["name"]))
            continue
        if m := _DROP.match(code):
            what = " ".join(m["what"].upper().split())
            names = re.split(r"\b(?:CASCADE|RESTRICT)\b", m["names"], flags=re.I)[0]
            targets = [unquote(n) for n in re.findall(_QNAME, names)]
            targets = [t for t in targets if t not in created]
            rule = "drop-table" if what == "TABLE" else f"drop-{what.lower().replace(' ', '-')}"
            if old := [t for t in targets if t not in earlier.relations]:
                add(stmt, rule, f"DROP {what} {', '.join(old)}: loses data and breaks the running color, "
                    "which still uses it")
            if new := [t for t in targets if t in earlier.relations]:
                note(stmt, rule, f"DROP {what} {', '.join(new)}")
            continue
        if m := _TRUNCATE.match(code):
            targets = [unquote(n) for n in re.findall(_QNAME, m["names"])]
            if all(t in created or t in earlier.relations for t in targets):
                note(stmt, "truncate", f"TRUNCATE {', '.join(targets)}")
            else:
                add(stmt, "truncate", "TRUNCATE deletes every row")
            continue
        if m := _ALTER_TYPE_RENAME.match(code):
            type_name = unquote(m["name"])
            if type_name in new_types or type_name in earlier.types:
                note(stmt, "rename", f"renaming type {type_name} (or a value of it)")
            else:
                add(stmt, "rename", f"renaming type {type_name} (or a value of it) breaks the running color")
            continue
        if m := _CREATE_INDEX.match(code):
            table = unquote(m["table"])
            if m["concurrently"] or table in created or table in earlier.relations:
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
                for action in _split_actions(m["actions"]):
                    if (a := _A_RENAME.match(action)) and not a["col"]:
                        created.add(unquote(a["new"]))
                continue
            new_table = table in earlier.relations
            for action in _split_actions(m["actions"]):
                # what: the change; why: the hazard. new: it changes what the running color does not know
                if a := _A_DROP_COLUMN.match(action):
                    col = unquote(a["col"])
                    rule, what = "drop-column", f"DROP COLUMN {table}.{col}"
                    why = ": loses data and breaks the running color"
                    new = (table, col) in new_columns
                elif a := _A_RENAME.match(action):
                    col = unquote(a["col"]) if a["col"] else None
                    rule, why = "rename", " breaks the running color"
                    what = f"renaming {f'column {table}.{col}' if col else f'table {table}'} to {unquote(a['new'])}"
                    new = col is not None and (table, col) in new_columns
                    if new_table and col is None:
                        earlier.relations.add(unquote(a["new"]))
                    elif new:
                        new_columns.add((table, unquote(a["new"])))
                elif a := _A_TYPE.match(action):
                    col = unquote(a["col"])
                    rule, what = "type-change", f"changing the type of {table}.{col}"
                    why = " rewrites the table and can break the running color or lose data"
                    new = (table, col) in new_columns
                elif a := _A_SET_NOT_NULL.match(action):
                    # not even for a column new to the running color: its inserts leave it NULL
                    rule, what = "not-null", f"SET NOT NULL on {table}.{unquote(a['col'])}"
                    why, new = ": fails on existing NULLs and the running color may still write NULL", False
                elif a := _A_ADD_COLUMN.match(action):
                    rest = a["rest"].upper()
                    added = unquote(a["col"])
                    new_columns.add((table, added))
                    if not (re.search(r"\bNOT\s+NULL\b", rest) and not re.search(r"\bDEFAULT\b|\bGENERATED\b", rest)):
                        continue
                    rule, what, new = "not-null", f"ADD COLUMN {table}.{added} NOT NULL without DEFAULT", False
                    why = " fails on a table with rows, and the running color does not fill it"
                else:
                    continue
                if new_table or new:
                    note(stmt, rule, what)
                else:
                    add(stmt, rule, what + why)
    if batch is not None:
        batch.relations |= created
        batch.types |= new_types
        batch.columns |= {c for c in new_columns if c[0] not in batch.relations}
    return findings


_NOTHING_RUNS = "no migration is applied to this database yet, so no running color uses it"


def lint(migrations: Iterable[Migration], table_rows: Mapping[str, float] | None = None, *,
         pending_batch: bool = False, empty_database: bool = False) -> list[Finding]:
    """Findings for ``migrations``, in order.

    ``pending_batch``: they are the pending migrations one deploy applies together, in this order; what an earlier
    one creates is new to the running color, and findings on it are ``info``. ``empty_database``: no migration was
    applied to the database yet: no color runs on it, and every blue/green finding is ``info``."""
    out: list[Finding] = []
    batch = Batch() if pending_batch else None
    for m in migrations:
        out.extend(lint_script(m.name, m.sql, table_rows, batch))
    if empty_database:
        out = [f if f.severity == INFO or f.rule == "concurrently-in-multi-statement"
               else replace(f, severity=INFO, message=f"{f.message} — not a hazard here: {_NOTHING_RUNS}")
               for f in out]
    return out


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == ERROR]
