import hashlib
from datetime import UTC, datetime

import pytest

from aixsss_ops.errors import UsageError
from aixsss_ops.migrate.create import create_migration
from aixsss_ops.migrate.layout import LayoutError, checksum, matches_checksum, read_layout


def test_checksum_is_sha256_hex_of_the_bytes():
    # the value Prisma's own unit test pins for "hello"
    assert checksum(b"hello") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert len(checksum(b"abcd")) == 64


@pytest.mark.parametrize("a, b", [
    (b"ab\ncd\nef\ngh\rab", b"ab\r\ncd\r\nef\r\ngh\rab"),
    (b"ab\ncd\nef\ngh\rab\n", b"ab\r\ncd\r\nef\r\ngh\rab\r\n"),
])
def test_checksum_comparison_ignores_crlf_vs_lf(a, b):
    for x in (a, b):
        for y in (a, b):
            assert matches_checksum(x, checksum(y))


def test_checksum_comparison_detects_real_changes():
    assert not matches_checksum(b"abc", checksum(b"abcd"))
    assert not matches_checksum(b"abc\n", checksum(b"abc"))


def test_old_unpadded_checksums_written_by_early_prisma_still_match():
    script = b"CREATE TABLE a (id int);\n"
    digest = hashlib.sha256(script).digest()
    old = "".join(f"{b:x}" for b in digest)
    if len(old) == 64:  # pick a script whose digest has a byte < 0x10
        script = next(s for s in (f"-- {i}\n".encode() for i in range(1000))
                      if any(b < 16 for b in hashlib.sha256(s).digest()))
        old = "".join(f"{b:x}" for b in hashlib.sha256(script).digest())
    assert len(old) < 64
    assert matches_checksum(script, old)
    assert not matches_checksum(script + b" ", old)


def _mk(root, name, sql=b"SELECT 1;\n"):
    d = root / name
    d.mkdir(parents=True)
    if sql is not None:
        (d / "migration.sql").write_bytes(sql)
    return d


def test_layout_is_in_lexical_folder_order_and_ignores_files(tmp_path):
    for n in ["20240102000000_b", "000_init", "001_ai_job_profile", "20231231000000_a"]:
        _mk(tmp_path, n)
    (tmp_path / "migration_lock.toml").write_text('provider = "postgresql"\n')
    (tmp_path / "README.md").write_text("x")
    layout = read_layout(tmp_path)
    assert layout.names == ["000_init", "001_ai_job_profile", "20231231000000_a", "20240102000000_b"]
    assert layout.provider == "postgresql"
    assert layout.get("000_init").checksum == checksum(b"SELECT 1;\n")


def test_folder_without_migration_sql_is_a_clear_error(tmp_path):
    _mk(tmp_path, "001_ok")
    _mk(tmp_path, "002_broken", sql=None)
    with pytest.raises(LayoutError, match="002_broken.*no migration.sql"):
        read_layout(tmp_path)


def test_non_postgres_lockfile_is_refused(tmp_path):
    _mk(tmp_path, "001_ok")
    (tmp_path / "migration_lock.toml").write_text('provider = "mysql"\n')
    with pytest.raises(LayoutError, match="mysql"):
        read_layout(tmp_path)


def test_malformed_lockfile_and_non_utf8_script_are_refused(tmp_path):
    _mk(tmp_path, "001_ok", b"SELECT '\xff';")
    with pytest.raises(LayoutError, match="UTF-8"):
        read_layout(tmp_path)
    (tmp_path / "migration_lock.toml").write_text("provider = ")
    with pytest.raises(LayoutError, match="malformed"):
        read_layout(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        read_layout(tmp_path / "nope")


def test_create_makes_a_timestamped_folder_with_an_empty_script(tmp_path):
    path = create_migration(tmp_path, "Add scene notes!", now=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert path == tmp_path / "20250304050607_add_scene_notes" / "migration.sql"
    assert path.read_bytes() == b""
    assert 'provider = "postgresql"' in (tmp_path / "migration_lock.toml").read_text()
    assert read_layout(tmp_path).names == ["20250304050607_add_scene_notes"]


def test_create_is_refused_in_production(tmp_path):
    with pytest.raises(UsageError, match="production"):
        create_migration(tmp_path, "x", node_env="production")
    assert not any(tmp_path.iterdir())
