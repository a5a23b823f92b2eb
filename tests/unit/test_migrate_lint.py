from aixsss_ops.migrate.history import APPLIED, FAILED, INTERRUPTED, MISSING, MODIFIED, PENDING, compare
from aixsss_ops.migrate.layout import Layout, Migration, checksum
from aixsss_ops.migrate.ledger import STARTED_ATOMIC, Row
from aixsss_ops.migrate.lint import ERROR, INFO, WARNING, blocking, lint, lint_script
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


CREATE_EPISODE = 'CREATE TABLE "Episode" ("id" TEXT NOT NULL, "n" TEXT, "title" TEXT, "note" TEXT);\n'
CHANGE_EPISODE = """ALTER TABLE "Episode" ALTER COLUMN "n" SET DATA TYPE INTEGER USING "n"::integer;
ALTER TABLE "Episode" RENAME COLUMN "title" TO "name";
ALTER TABLE "Episode" ALTER COLUMN "note" SET NOT NULL;
"""


def _migrations(**scripts: str) -> list[Migration]:
    return [Migration(name, None, sql.encode()) for name, sql in scripts.items()]


def _found(findings):
    return [(f.migration, f.rule, f.severity, f.line) for f in findings]


def test_objects_created_earlier_in_the_pending_batch_are_notes_not_blockers():
    ms = _migrations(m1_create=CREATE_EPISODE, m2_change=CHANGE_EPISODE)
    # a folder linted on its own (offline): the second migration may run long after the first, against a live color
    assert _found(lint(ms)) == [("m2_change", "type-change", ERROR, 1), ("m2_change", "rename", ERROR, 2),
                                ("m2_change", "not-null", ERROR, 3)]
    # the pending migrations one deploy applies together: the running color has never seen "Episode"
    found = lint(ms, pending_batch=True)
    assert _found(found) == [("m2_change", "type-change", INFO, 1), ("m2_change", "rename", INFO, 2),
                             ("m2_change", "not-null", INFO, 3)]
    assert blocking(found) == []
    assert all("created by the pending migrations" in f.message for f in found)


def test_batch_tracks_renamed_tables_new_columns_and_types_but_not_what_existed():
    ms = _migrations(
        m1="""CREATE TYPE "Mood" AS ENUM ('a', 'b');
CREATE TABLE "Draft" ("id" TEXT);
ALTER TABLE "Scene" ADD COLUMN "mood" TEXT;
""",
        m2="""ALTER TABLE "Draft" RENAME TO "Sketch";
ALTER TYPE "Mood" RENAME VALUE 'a' TO 'calm';
ALTER TABLE "Scene" ALTER COLUMN "mood" TYPE "Mood" USING "mood"::"Mood", ALTER COLUMN "title" TYPE VARCHAR(80);
""",
        m3="""ALTER TABLE "Sketch" DROP COLUMN "id";
ALTER TABLE "Scene" RENAME COLUMN "mood" TO "feel";
ALTER TABLE "Scene" DROP COLUMN "feel";
ALTER TABLE "Scene" ALTER COLUMN "feel2" SET NOT NULL;
ALTER TABLE "Scene" ADD COLUMN "extra" TEXT, ALTER COLUMN "extra" SET NOT NULL;
CREATE INDEX "Sketch_idx" ON "Sketch"("x");
DROP TABLE "Sketch", "AuditLog";
TRUNCATE "Sketch";
TRUNCATE "Sketch", "AIJob";
""",
    )
    found = lint(ms, pending_batch=True)
    assert _found(found) == [
        ("m2", "rename", INFO, 1),  # a table created by m1
        ("m2", "rename", INFO, 2),  # a type created by m1
        ("m2", "type-change", INFO, 3),  # Scene.mood: added by m1
        ("m2", "type-change", ERROR, 3),  # Scene.title: the running color uses it
        ("m3", "drop-column", INFO, 1),  # "Sketch" is "Draft" renamed
        ("m3", "rename", INFO, 2),
        ("m3", "drop-column", INFO, 3),  # "feel" is "mood" renamed
        ("m3", "not-null", ERROR, 4),
        # a new column of a table the running color writes to: its inserts leave it NULL
        ("m3", "not-null", ERROR, 5),
        ("m3", "drop-table", ERROR, 7),  # AuditLog
        ("m3", "drop-table", INFO, 7),  # Sketch
        ("m3", "truncate", INFO, 8),
        ("m3", "truncate", ERROR, 9),
    ]
    assert "AuditLog" in found[9].message and "Sketch" not in found[9].message


def test_on_a_database_with_no_migration_applied_every_finding_is_a_note():
    destructive = 'DROP TABLE IF EXISTS "Legacy";\nALTER TABLE "User" RENAME COLUMN "email" TO "mail";\n'
    concurrently = 'ALTER TABLE "User" ADD COLUMN "m" TEXT;\nCREATE INDEX CONCURRENTLY "i" ON "User"("m");\n'
    ms = _migrations(m1=destructive, m2=concurrently, m3='CREATE INDEX "u" ON "User"("m");\n')
    assert [f.severity for f in lint(ms, pending_batch=True)] == [ERROR, ERROR, WARNING, WARNING]
    found = lint(ms, pending_batch=True, empty_database=True)
    assert _found(found) == [("m1", "drop-table", INFO, 1), ("m1", "rename", INFO, 2),
                             # not a blue/green matter: it fails in a transaction whatever the database holds
                             ("m2", "concurrently-in-multi-statement", WARNING, 2),
                             ("m3", "index-not-concurrent", INFO, 1)]
    assert "no migration is applied to this database yet" in found[0].message


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
