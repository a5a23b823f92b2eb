"""``globals.sql`` (``pg_dumpall --globals-only``) on restore: the backup's roles that the server lacks.

Applied by default, and only ever additively: a role of the backup that does not exist on the server is created
with its attributes, password hash, settings, comment and memberships; a role that exists is never altered (not
even its password), so the connecting superuser and every live role keep what they have now. Why by default: a
dump whose tables are owned by, or granted to, a role the server lacks cannot be restored at all (pg_restore stops
at ``ALTER TABLE … OWNER TO`` a missing role), and the grants are part of the restore point. The risk is bringing
back a login that was dropped on purpose (a revoked credential, with its old password hash): the plan names every
role it will create, and whether it can log in, before anything runs, and ``--no-globals`` leaves roles alone.
Tablespaces are never created (a path of another host); statements this module does not recognise are skipped
and reported, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aixsss_ops.dburl import PgTarget

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'


def split_statements(text: str) -> list[str]:
    """The SQL statements of a pg_dumpall script: ``;``-terminated, quotes and ``--`` comments honoured, psql
    meta-commands (``\\restrict``, ``\\connect`` …, alone on their line) left out."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    line_start = True
    while i < n:
        ch = text[i]
        if line_start and not "".join(buf).strip() and ch == "\\":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        line_start = ch == "\n"
        if ch == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if ch in ("'", '"'):
            j = i + 1
            while j < n:
                if text[j] == ch:
                    if j + 1 < n and text[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(text[i:j + 1])
            i = j + 1
            continue
        if ch == ";":
            stmt = "".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    rest = "".join(buf).strip()
    if rest:
        out.append(rest)
    return out


def unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident.lower()


@dataclass
class Statement:
    sql: str
    kind: str  # set | create_role | role | membership | tablespace | other
    role: str | None = None  # the role it creates or changes (create_role, role)
    roles: tuple[str, ...] = ()  # the roles a membership/privilege involves


_PATTERNS = [
    ("set", re.compile(r"SET\s+\w+\s*(=|TO)\s*.+", re.S | re.I)),
    ("create_role", re.compile(rf"CREATE\s+ROLE\s+({_IDENT})", re.S | re.I)),
    ("role", re.compile(rf"ALTER\s+ROLE\s+({_IDENT})\s.+", re.S | re.I)),
    ("role", re.compile(rf"COMMENT\s+ON\s+ROLE\s+({_IDENT})\s+IS\s.+", re.S | re.I)),
    ("role", re.compile(rf"SECURITY\s+LABEL\s+FOR\s+{_IDENT}\s+ON\s+ROLE\s+({_IDENT})\s+IS\s.+", re.S | re.I)),
    ("membership", re.compile(rf"GRANT\s+({_IDENT})\s+TO\s+({_IDENT})(?:\s+WITH\s+.+?)?(?:\s+GRANTED\s+BY\s+{_IDENT})?",
                              re.S | re.I)),
    ("privilege", re.compile(rf"GRANT\s+.+\s+ON\s+PARAMETER\s+.+\s+TO\s+({_IDENT})(?:\s+WITH\s+GRANT\s+OPTION)?",
                             re.S | re.I)),
    ("tablespace", re.compile(r"(CREATE|ALTER|COMMENT\s+ON)\s+TABLESPACE\s.+|GRANT\s.+\sON\s+TABLESPACE\s.+",
                              re.S | re.I)),
]


def classify(sql: str) -> Statement:
    for kind, rx in _PATTERNS:
        m = rx.fullmatch(sql)
        if not m:
            continue
        if kind == "create_role":
            return Statement(sql, kind, role=unquote(m.group(1)))
        if kind == "role":
            return Statement(sql, kind, role=unquote(m.group(1)))
        if kind == "membership":
            return Statement(sql, kind, roles=(unquote(m.group(1)), unquote(m.group(2))))
        if kind == "privilege":
            return Statement(sql, "membership", roles=(unquote(m.group(1)),))
        return Statement(sql, kind)
    return Statement(sql, "other")


@dataclass
class RolePlan:
    """What applying ``globals.sql`` would do on this server."""

    create: list[str] = field(default_factory=list)  # roles of the backup the server lacks
    logins: list[str] = field(default_factory=list)  # of those, the ones that can log in
    existing: list[str] = field(default_factory=list)  # roles of the backup already there: left as they are
    statements: list[Statement] = field(default_factory=list)  # to run, in order
    skipped: list[str] = field(default_factory=list)  # not recognised or not ours to change (first 80 chars)

    def to_dict(self) -> dict[str, Any]:
        return {"create": self.create, "logins": self.logins, "existing": self.existing,
                "statements": len(self.statements), "skipped": self.skipped}


def plan_roles(text: str, existing: set[str]) -> RolePlan:
    """The statements of ``text`` to run on a server whose roles are ``existing``."""
    stmts = [classify(s) for s in split_statements(text)]
    created = [s.role for s in stmts if s.kind == "create_role"]
    new = {r for r in created if r not in existing}
    plan = RolePlan(create=[r for r in created if r in new], existing=sorted({r for r in created if r in existing}))
    for s in stmts:
        if s.kind == "set":
            plan.statements.append(s)
        elif s.kind in ("create_role", "role"):
            if s.role in new:
                plan.statements.append(s)
                if s.kind == "role" and re.search(r"\sLOGIN\b", s.sql) and s.role not in plan.logins:
                    plan.logins.append(s.role)
        elif s.kind == "membership":
            # a membership the server cannot have yet (one side is a role being created); existing pairs untouched
            if any(r in new for r in s.roles):
                plan.statements.append(s)
        else:
            plan.skipped.append(" ".join(s.sql.split())[:80])
    return plan


def existing_roles(admin: PgTarget) -> set[str]:
    with admin.connect(timeout=10) as c:
        return {r[0] for r in c.execute("SELECT rolname FROM pg_roles").fetchall()}


@dataclass
class RoleResult:
    created: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # created meanwhile by someone else: left alone
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "already_existed": self.already, "warnings": self.warnings}


def apply_roles(admin: PgTarget, plan: RolePlan) -> RoleResult:
    """Run the plan's statements one by one (autocommit). A role that appeared meanwhile ("already exists") is
    left alone with everything that would change it; any other failing statement is a warning, not a failure:
    pg_restore then names what is still missing."""
    import psycopg

    res = RoleResult()
    skip: set[str] = set()
    with admin.connect(timeout=10, autocommit=True) as c:
        for s in plan.statements:
            if (s.role is not None and s.role in skip) or any(r in skip for r in s.roles):
                continue
            try:
                c.execute(s.sql)
            except psycopg.errors.DuplicateObject:
                if s.kind == "create_role":
                    skip.add(s.role)
                    res.already.append(s.role)
                continue
            except psycopg.Error as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                what = " ".join(s.sql.split())
                if "PASSWORD" in what.upper():
                    what = re.sub(r"PASSWORD\s+'[^']*'", "PASSWORD '****'", what, flags=re.I)
                res.warnings.append(f"{what[:80]}: {msg}")
                if s.kind == "create_role":
                    skip.add(s.role)
                continue
            if s.kind == "create_role":
                res.created.append(s.role)
    return res
