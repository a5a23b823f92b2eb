"""The app's role and database on the stack's PostgreSQL server."""

from __future__ import annotations


def ensure_role_and_database(admin_url: str, database: str, role: str, password: str) -> list[str]:
    """Create the app role (with ``password``) and database owned by it; returns what was created."""
    from psycopg import sql

    from aixsss_ops.dburl import parse_database_url

    created: list[str] = []
    with parse_database_url(admin_url).connect() as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            created.append(f"role {role}")
        else:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
            created.append(f"database {database}")
    return created
