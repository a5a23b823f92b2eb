from aixsss_ops.migrate.history import APPLIED, FAILED, INTERRUPTED, MISSING, MODIFIED, PENDING, compare
from aixsss_ops.migrate.layout import Layout, Migration, checksum
from aixsss_ops.migrate.ledger import STARTED_ATOMIC, Row
from aixsss_ops.migrate.lint import ERROR, WARNING, lint_script
from aixsss_ops.migrate.statements import runs_in_one_transaction, split, statement_at


def rules(sql, sizes=None):
    return [(f.rule, f.severity, f.line) for f in lint_script("m", sql, sizes)]


def test_split_respects_quotes_comments_and_dollar_bodies():
    sql = """-- a comment; with a semicolon
CREATE TABLE "a;b" (x text DEFAULT 'it''s; fine');
/* block ; /* nested ; */ */
CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
SELECT E'\\'; still a string';
CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;
"""
    stmts = split(sql)
    assert [s.line for s in stmts] == [2, 4, 5, 6]
    assert stmts[0].text.startswith('CREATE TABLE "a;b"')
    assert "$body$ SELECT 1; $body$" in stmts[1].text
    assert stmts[3].text.endswith("SELECT 2; END")
    pos = sql.index("SELECT E")
    assert statement_at(stmts, pos + 3) is stmts[2]


def test_transaction_detection():
    assert runs_in_one_transaction(split("CREATE TABLE a (x int); INSERT INTO a VALUES (1);"))
    assert not runs_in_one_transaction(split('CREATE INDEX CONCURRENTLY "i" ON "A"(x);'))
    assert not runs_in_one_transaction(split("BEGIN; CREATE TYPE t AS ENUM ('a'); COMMIT;"))


def test_destructive_statements_on_existing_tables_are_errors():
    sql = """
DROP TABLE "AuditLog";
ALTER TABLE "Scene" DROP COLUMN "notes",
ADD COLUMN "order" INTEGER NOT NULL,
ALTER COLUMN "title" SET DATA TYPE VARCHAR(80);
ALTER TABLE "Project" RENAME COLUMN "name" TO "title";
ALTER TABLE "Team" RENAME TO "Org";
ALTER TABLE "User" ALTER COLUMN "email" SET NOT NULL;
ALTER TYPE "SceneStatus" RENAME VALUE 'draft' TO 'sketch';
TRUNCATE "AIJob";
"""
    found = rules(sql)
    assert ("drop-table", ERROR, 2) in found
    assert ("drop-column", ERROR, 3) in found
    assert ("not-null", ERROR, 3) in found
    assert ("type-change", ERROR, 3) in found
    assert ("rename", ERROR, 6) in found and ("rename", ERROR, 7) in found and ("rename", ERROR, 9) in found
    assert ("not-null", ERROR, 8) in found
    assert ("truncate", ERROR, 10) in found


def test_additive_and_safe_statements_have_no_findings():
    sql = """
CREATE TYPE "Mood" AS ENUM ('a', 'b');
ALTER TABLE "Scene" ADD COLUMN "mood" "Mood", ADD COLUMN "n" INTEGER NOT NULL DEFAULT 0;
ALTER TABLE "Scene" ADD CONSTRAINT "Scene_fk" FOREIGN KEY ("p") REFERENCES "Project"("id") ON DELETE CASCADE;
ALTER TABLE "Scene" DROP CONSTRAINT "Scene_old_fk";
ALTER TABLE "Scene" ALTER COLUMN "title" DROP NOT NULL, ALTER COLUMN "n" SET DEFAULT 1;
COMMENT ON TABLE "Scene" IS 'DROP TABLE "Scene"; ALTER TABLE x DROP COLUMN y';
"""
    assert rules(sql) == []


def test_concurrent_index_alone_is_fine_but_not_among_other_statements():
    assert rules('CREATE INDEX CONCURRENTLY "i" ON "Scene"("mood");') == []
    assert rules('ALTER TABLE "Scene" ADD COLUMN "m" TEXT;\nCREATE INDEX CONCURRENTLY "i" ON "Scene"("m");') == [
        ("concurrently-in-multi-statement", WARNING, 2)
    ]


def test_tables_created_in_the_same_migration_are_exempt():
    sql = """
CREATE TABLE "Episode" ("id" TEXT NOT NULL, "title" TEXT);
ALTER TABLE "Episode" ADD COLUMN "n" INTEGER NOT NULL;
CREATE INDEX "Episode_title_idx" ON "Episode"("title");
ALTER TABLE "Episode" RENAME COLUMN "title" TO "name";
"""
    assert rules(sql) == []


def test_index_rule_uses_table_sizes_when_known():
    sql = 'CREATE INDEX "Scene_x_idx" ON "Scene"("x");\nCREATE UNIQUE INDEX "u" ON public."User"("email");'
    assert rules(sql) == [("index-not-concurrent", WARNING, 1), ("index-not-concurrent", WARNING, 2)]
    assert rules(sql, {"Scene": 5_000_000.0, "User": 10.0}) == [("index-not-concurrent", ERROR, 1)]


def _row(name, cs, *, finished=True, rolled_back=False, logs=None):
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Row("id-" + name, cs, now if finished else None, name, logs, now if rolled_back else None, now, int(finished))


def test_history_classification():
    ms = [Migration(n, None, f"SELECT {i};".encode()) for i, n in enumerate(["a", "b", "c", "d", "e", "f"])]
    layout = Layout(None, ms, "postgresql")
    cs = {m.name: m.checksum for m in ms}
    rows = [
        _row("a", cs["a"]),
        _row("b", checksum(b"something else")),
        _row("c", cs["c"], finished=False, logs="ERROR: boom"),
        _row("d", cs["d"], finished=False, logs=STARTED_ATOMIC),
        _row("e", cs["e"], finished=False, rolled_back=True, logs="ERROR: x"),
        _row("zz_gone", "0" * 64),
    ]
    h = compare(layout, rows)
    assert {e.name: e.state for e in h.entries} == {
        "a": APPLIED, "b": MODIFIED, "c": FAILED, "d": INTERRUPTED, "e": PENDING, "f": PENDING, "zz_gone": MISSING,
    }
    # an unfinished row with no logs (Prisma killed, or a non-transactional script) cannot be retried blindly
    assert compare(layout, [_row("a", cs["a"], finished=False)]).entry("a").state == FAILED
