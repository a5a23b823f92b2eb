import psycopg

from aixsss_ops.dburl import parse_database_url


def test_fresh_database_is_empty_and_prisma_schema_is_translated(database_url):
    target = parse_database_url(database_url)
    assert "schema=" not in target.conninfo
    with target.connect() as conn:
        assert conn.execute("SHOW search_path").fetchone()[0] == "public"
        n = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    assert n == 0
    # libpq itself rejects the Prisma parameter, which is why it is translated
    try:
        psycopg.connect(database_url, connect_timeout=2).close()
        raised = False
    except psycopg.ProgrammingError:
        raised = True
    assert raised
