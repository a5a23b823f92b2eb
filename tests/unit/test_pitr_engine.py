"""Point-in-time recovery's edges against pgBackRest: target times beyond the calendar, a failed command's message
and hints, and a repository ``info`` cannot read (on a fake site: no pgBackRest runs)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import pytest

from aixsss_ops.backup import pitr
from aixsss_ops.errors import OpsError, UsageError

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["-99999999d", "-9999999999999d", pytest.param("-" + "9" * 400 + "s", id="-9e400s"),
                                  "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_target_times_beyond_the_calendar_are_usage_errors_naming_the_input(text):
    with pytest.raises(UsageError) as e:
        pitr.parse_target(text, NOW)
    assert repr(text) in e.value.message and "\n" not in e.value.message
    assert e.value.exit_code == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("0001-01-01T00:00:00-01:00", datetime(1, 1, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59+01:00", datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)),
])
def test_target_times_at_the_calendar_edges_in_range_still_parse(text, expected):
    assert pitr.parse_target(text, NOW) == expected


class _Site:
    """Answers every command with ``returncode``, ``stdout`` and ``stderr``; the argument lists in ``calls``."""

    stanza = "aixsss"
    log_hint = "/x/log"

    def __init__(self, returncode: int = 0, stdout: str = "", stderr: str = ""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.calls: list[tuple[str, ...]] = []

    def run(self, args: tuple[str, ...], timeout: float, abort=None) -> subprocess.CompletedProcess:
        self.calls.append(args)
        return subprocess.CompletedProcess(["pgbackrest", *args], self.returncode, self.stdout, self.stderr)


ARCHIVE_TIMEOUT = """\
ERROR: [082]: WAL segment 000000010000000000000005 was not archived before the 60000ms timeout
       HINT: check the archive_command to ensure that all options are correct (especially --stanza).
       HINT: check the PostgreSQL server log for errors.
       HINT: run the 'start' command if the stanza was previously stopped.
"""

NO_ARCHIVE_INFO = """\
ERROR: [055]: unable to load info file '/x/archive/aixsss/archive.info' or '/x/archive/aixsss/archive.info.copy':
       FileMissingError: unable to open missing file '/x/archive/aixsss/archive.info' for read
       FileMissingError: unable to open missing file '/x/archive/aixsss/archive.info.copy' for read
       HINT: archive.info cannot be opened but is required to push/get WAL segments.
       HINT: is archive_command configured correctly in postgresql.conf?
       HINT: has a stanza-create been performed?
       HINT: use --no-archive-check to disable archive checks during backup if you have an alternate archiving scheme.
"""


def test_a_failed_command_is_reported_with_its_error_line_and_its_hints():
    with pytest.raises(OpsError) as e:
        pitr.Engine(_Site(82, stderr=ARCHIVE_TIMEOUT)).check()
    assert e.value.message == ("pgbackrest check failed (exit 82): [082]: WAL segment 000000010000000000000005 was "
                               "not archived before the 60000ms timeout")
    assert e.value.hint == ("check the archive_command to ensure that all options are correct (especially --stanza).; "
                            "check the PostgreSQL server log for errors.; "
                            "run the 'start' command if the stanza was previously stopped.; its log: /x/log")
    assert e.value.details == ARCHIVE_TIMEOUT.rstrip()


def test_an_error_line_followed_by_its_causes_is_the_message_and_the_causes_stay_in_the_details():
    with pytest.raises(OpsError) as e:
        pitr.Engine(_Site(55, stderr=NO_ARCHIVE_INFO)).backup("full")
    assert e.value.message == ("pgbackrest backup failed (exit 55): [055]: unable to load info file "
                               "'/x/archive/aixsss/archive.info' or '/x/archive/aixsss/archive.info.copy':")
    assert e.value.hint.startswith("archive.info cannot be opened but is required to push/get WAL segments.; ")
    assert e.value.hint.endswith("; has a stanza-create been performed?; use --no-archive-check to disable archive "
                                 "checks during backup if you have an alternate archiving scheme.; its log: /x/log")
    assert "FileMissingError: unable to open missing file '/x/archive/aixsss/archive.info' for read" in e.value.details


def test_the_error_and_hint_lines_of_the_console_log_on_stdout_count_too():
    out = ("2026-12-06 12:00:00.000 P00   INFO: check command begin 2.45\n"
           "2026-12-06 12:01:00.000 P00  ERROR: [082]: WAL segment 000000010000000000000005 was not archived\n"
           "                                    HINT: check the PostgreSQL server log for errors.\n"
           "2026-12-06 12:01:00.000 P00   INFO: check command end: aborted with exception [082]\n")
    with pytest.raises(OpsError) as e:
        pitr.Engine(_Site(82, stdout=out)).check()
    assert e.value.message.endswith("(exit 82): [082]: WAL segment 000000010000000000000005 was not archived")
    assert e.value.hint == "check the PostgreSQL server log for errors.; its log: /x/log"


def test_a_failed_command_without_an_error_line_is_reported_with_its_last_line():
    out = "\n".join(f"line {i}" for i in range(30)) + "\n\n"
    with pytest.raises(OpsError) as e:
        pitr.Engine(_Site(1, stdout=out)).run("repo-ls")
    assert e.value.message == "pgbackrest repo-ls failed (exit 1): line 29"
    assert e.value.hint == "its log: /x/log"
    assert e.value.details.splitlines() == [f"line {i}" for i in range(10, 30)]
    with pytest.raises(OpsError, match=r"failed \(exit 3\): no message$"):
        pitr.Engine(_Site(3)).run("repo-ls")


def _stanza(code: int, message: str, repo: list | None = None) -> str:
    one = {"name": "aixsss", "status": {"code": code, "lock": {"backup": {"held": False}}, "message": message},
           "archive": [], "backup": [], "cipher": "none", "db": []}
    if repo is not None:
        one["repo"] = repo
    return json.dumps([one])


def _repo(code: int, message: str) -> list:
    return [{"cipher": "none", "key": 1, "status": {"code": code, "message": message}}]


UNLISTABLE = "[PathOpenError] unable to list file info for path '/x/backup': [13] Permission denied"
UNOPENABLE = ("[FileOpenError] unable to load info file '/x/backup/aixsss/backup.info' or "
              "'/x/backup/aixsss/backup.info.copy':\n"
              "FileOpenError: unable to open file '/x/backup/aixsss/backup.info' for read: [13] Permission denied\n"
              "HINT: has a stanza-create been performed?")


@pytest.mark.parametrize(("code", "message", "repo", "said"), [
    (99, "other", _repo(99, UNLISTABLE), f"other (repo1: {UNLISTABLE})"),
    (99, "other", _repo(99, UNOPENABLE), "other (repo1: [FileOpenError] unable to load info file "
                                         "'/x/backup/aixsss/backup.info' or '/x/backup/aixsss/backup.info.copy':)"),
    (99, "other", None, "other"),
    (4, "different across repos", _repo(0, "ok"), "different across repos"),
    (5, "database mismatch", [], "database mismatch"),
])
def test_a_repository_info_cannot_read_is_an_error_not_an_empty_window(code, message, repo, said):
    """pgBackRest's info exits 0 on a repository it cannot read (status 99 "other", the cause in the repo's status):
    the operator is sent to the repository, not to take a base backup."""
    site = _Site(0, stdout=_stanza(code, message, repo), stderr="WARN: something on stderr")
    with pytest.raises(OpsError) as e:
        pitr.Engine(site).info()
    assert e.value.message == f"pgbackrest info: the repository cannot be read: {said}"
    assert e.value.hint == "its log: /x/log"
    assert "WARN: something on stderr" in e.value.details
    if repo and "\n" in repo[0]["status"]["message"]:
        assert "HINT: has a stanza-create been performed?" in e.value.details


@pytest.mark.parametrize(("code", "message", "exists"), [
    (0, "ok", True), (1, "missing stanza path", False), (2, "no valid backups", True),
    (3, "missing stanza data", False), (6, "backup/expire running", True),
])
def test_the_stanza_states_info_reads_are_answers_not_errors(code, message, exists):
    info = pitr.Engine(_Site(0, stdout=_stanza(code, message, _repo(code, message)))).info()
    assert (info.status_code, info.exists, info.backups) == (code, exists, [])


NO_SUCH_BUCKET = ("[ProtocolError] HTTP request failed with 404 (Not Found):\n*** Path/Query ***:\n"
                  "GET /pitr-repo/?delimiter=%2F&list-type=2&prefix=b.pgbackrest%2Fbackup%2F\n"
                  "*** Response Content ***:\n<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket"
                  "</Code><Message>The specified bucket does not exist</Message></Error>")


def test_a_repository_whose_bucket_does_not_exist_is_a_stanza_to_create():
    """Status 99 with the store's NoSuchBucket: stanza-create makes the bucket first, so no error."""
    info = pitr.Engine(_Site(0, stdout=_stanza(99, "other", _repo(99, NO_SUCH_BUCKET)))).info()
    assert not info.exists and info.status_code == 99
