"""Bad URLs are usage errors that name the setting, never its password; masking by value and by shape;
rendering that stays readable at 80 columns."""

from __future__ import annotations

import io
import re

import pytest

from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import UsageError
from aixsss_ops.output import MASK, Output, SecretScrubber, mask_url
from tests.cli import run_cli

# -- mask_url and the scrubber's URL pattern ------------------------------------------------------------


@pytest.mark.parametrize("url, masked, secret", [
    ("redis://:Secret R3@[bad/0", "redis://:****@[bad/0", "Secret R3"),  # space, unparseable netloc
    ("postgresql://u:Pw3@Pw3@127.0.0.1:1/x", "postgresql://u:****@127.0.0.1:1/x", "Pw3@Pw3"),  # "@"
    ("postgresql://u:ab/cd@host/db", "postgresql://u:****@host/db", "ab/cd"),  # "/" ends urlsplit's netloc
    ("postgresql://u:x@[::1/x", "postgresql://u:****@[::1/x", None),
    ("postgresql://u:pw@host/db?x=a@b", "postgresql://u:****@host/db?x=a@b", None),  # "@" in the query
    ("postgresql://host:5432/db?x=a@b", "postgresql://host:5432/db?x=a@b", None),  # no credentials at all
    ("redis://user@host:1", "redis://user@host:1", None),
])
def test_mask_url_masks_up_to_the_last_at_before_the_host(url, masked, secret):
    from aixsss_ops.output import split_userinfo

    assert mask_url(url) == masked
    if secret:
        assert split_userinfo(url).password == secret


@pytest.mark.parametrize("text, secret", [
    ("error: invalid Redis URL redis://:Secret R3@[bad/0: Invalid IPv6 URL", "Secret R3"),
    ("postgres at postgresql://u:Pw3@Pw3@127.0.0.1:1/x is unreachable", "Pw3"),
    ('{"url": "redis://:Sec ret!@h:1/0",\n "b": "postgresql://u:p/w@h/db"}', "Sec ret!"),
])
def test_scrubber_masks_url_passwords_in_free_text(text, secret):
    out = SecretScrubber().scrub(text)
    assert secret not in out and MASK in out, out


def test_scrubber_leaves_urls_without_a_password_alone():
    text = "see http://example.com:8080 for the docs, or mail ops@example.com"
    assert SecretScrubber().scrub(text) == text


def test_add_url_registers_the_password_and_a_value_that_is_not_a_url():
    s = SecretScrubber()
    s.add_url("redis://:Pw3@Pw3@127.0.0.1:1/0")
    s.add_url("SecretPw6")
    out = s.scrub("auth Pw3@Pw3 failed; got SecretPw6")
    assert "Pw3@Pw3" not in out and "SecretPw6" not in out


# -- parse_database_url: usage errors that name the setting and never show the secret -------------------


@pytest.mark.parametrize("url, says", [
    ("postgresql://u:Secr3tPw@[::1/x", "not a valid URL"),
    ("postgresql://u:Secr%zzetPw@127.0.0.1:1/x", "invalid percent-escape"),
    ("postgresql://u:Secr3tPw@127.0.0.1:notaport/x", "invalid port"),
    ("SecretPw6", "must start with postgresql://"),
    ("postgresql://u:Secr3tPw@127.0.0.1:1/x?sslmode=bogus", "invalid sslmode: 'bogus' (one of disable"),
    ("postgresql://u:Secr3tPw@127.0.0.1:1/x?schema=s&target_session_attrs=rw", "invalid target_session_attrs"),
])
def test_bad_database_urls_are_usage_errors_without_the_secret(url, says):
    with pytest.raises(UsageError) as e:
        parse_database_url(url, "--database-url")
    msg = e.value.message + (e.value.hint or "")
    assert says in msg and "--database-url" in msg
    for secret in ("Secr3tPw", "Secr%zzetPw", "SecretPw6"):
        assert secret not in msg, msg


def test_a_url_libpq_refuses_before_connecting_is_a_usage_error_without_the_secret():
    target = parse_database_url("postgresql://u:Secr3tPw@127.0.0.1:1/x?no_such_option=1")
    with pytest.raises(UsageError) as e:
        target.connect(timeout=1).close()
    assert "no_such_option" in e.value.message and "Secr3tPw" not in e.value.message


def test_a_password_with_at_and_slash_reaches_libpq_percent_encoded():
    t = parse_database_url("postgresql://u:p@ss/w@db.example:5433/app?schema=s")
    assert t.host == "db.example" and t.port == 5433 and t.database == "app" and t.schema == "s"
    assert "u:p%40ss%2Fw@db.example:5433/app" in t.conninfo
    assert "p@ss/w" not in t.masked


# -- through the CLI: exit 2, the flag named, the password never printed ----------------------------------


@pytest.mark.parametrize("args", [
    ["migrate", "status", "--database-url", "postgresql://u:Secr3tPw@[::1/x"],
    ["migrate", "status", "--database-url", "postgresql://u:Secr%zzetPw@127.0.0.1:1/x"],
    ["migrate", "status", "--database-url", "SecretPw6"],
    ["migrate", "status", "--database-url", "postgresql://u:Secr3tPw@127.0.0.1:1/x?sslmode=bogus"],
    ["queue", "stats", "--redis-url", "redis://:Secret R3@[bad/0"],
    ["queue", "stats", "--redis-url", "redis://:Secr3tPw@[::1:6379/0"],
])
def test_cli_bad_urls_exit_2_naming_the_setting_and_not_the_password(args):
    r = run_cli(*args, timeout=60)
    assert r.code == 2, r.output
    assert "internal error" not in r.output
    assert ("DATABASE_URL" in r.stderr) if args[0] == "migrate" else ("REDIS_URL" in r.stderr), r.output
    for secret in ("Secr3tPw", "Secr%zzetPw", "SecretPw6", "Secret R3"):
        assert secret not in r.output, r.output
    assert "got SecretPw6" not in r.output


def test_cli_redis_password_with_at_is_masked_whole():
    r = run_cli("queue", "stats", "--redis-url", "redis://:Pw3@Pw3x@127.0.0.1:1/0", timeout=60)
    assert r.code == 1 and "unreachable" in r.stderr, r.output
    assert "Pw3" not in r.output, r.output


# -- rendering ------------------------------------------------------------------------------------------


def _render(fn, width: int = 80) -> str:
    from rich.console import Console

    out = Output()
    buf = io.StringIO()
    out._console = Console(file=buf, width=width, no_color=True, highlight=False, soft_wrap=True)
    fn(out)
    return buf.getvalue()


def test_table_never_cuts_a_whole_column_at_80_columns():
    bid = "20261231T235959Z-ab12"
    rows = [(bid, "2026-12-31T23:59:59Z", "a label", "12.3 MiB", "4.5 MiB", 1234, "complete keep enc", "3d",
             "2026-12-31T23:59:59Z (FAILED)")]
    cols = ["id", "time", "label", "db size", "dump", "objects", "status", "age", "verified"]
    text = _render(lambda o: o.table(None, cols, rows, whole=["id"]))
    assert bid in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # the other columns fold rather than lose text behind an ellipsis
    assert "…" not in text and "FAILED" in text.replace("\n", "").replace("│", "").replace(" ", "")


def test_help_shows_no_type_after_flags():
    r = run_cli("queue", "pause", "--help", env={"COLUMNS": "100"}, timeout=60)
    assert r.code == 0, r.output
    assert "<bool>" not in r.stdout, r.stdout
    assert "--redis-url" in r.stdout and "<str>" in r.stdout  # options that take a value keep it
    r = run_cli("--help", env={"COLUMNS": "100"}, timeout=60)
    assert r.code == 0 and "<bool>" not in r.stdout, r.stdout


def test_doctor_prints_one_finding_per_line_at_80_columns(tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    env = {"COLUMNS": "80", "DATABASE_URL": "", "REDIS_URL": ""}
    js = run_cli("--json", "doctor", "--only", "env", "--only", "host", config=cfg, env=env, timeout=120)
    findings = js.json["findings"]
    assert any(len(f["message"]) > 40 for f in findings), findings  # long enough to be wrapped by a table
    r = run_cli("doctor", "--only", "env", "--only", "host", config=cfg, env=env, timeout=120)
    assert r.code == js.code, r.output
    lines = r.stdout.splitlines()
    for f in findings:
        where = f["check"] + (f" ({f['variable']})" if f.get("variable") else "")
        # the numbers may move between the two runs (free disk space): any number stands for any other
        pattern = re.sub(r"[0-9]+(?:\\\.[0-9]+)?", "[0-9.]+", re.escape(f"{where}: {f['message']}"))
        assert any(re.search(pattern, line) for line in lines), r.stdout
        if f["fix"]:
            assert any(line.strip() == f"fix: {f['fix']}" for line in lines), r.stdout


def test_an_object_store_that_does_not_answer_is_one_line_with_a_hint():
    """A listing of a store nobody listens on: the reason without urllib3's object repr and retry text, and where to
    look."""
    from datetime import UTC, datetime

    from aixsss_ops.backup import objects
    from aixsss_ops.errors import ServiceUnavailable
    from aixsss_ops.s3 import S3Target

    with pytest.raises(ServiceUnavailable) as e:
        objects.take_snapshot(S3Target("http://127.0.0.1:1", "a", "b"), "bucket", datetime.now(UTC))
    assert e.value.message.startswith("s3 at http://127.0.0.1:1 is unreachable: ")
    assert "Connection refused" in e.value.message and "object at 0x" not in e.value.message
    assert "Max retries" not in e.value.message and "stack status" in e.value.hint
