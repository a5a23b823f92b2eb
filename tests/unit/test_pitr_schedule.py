"""`backup schedule` and the backup section's settings it reads: the calendars as systemd reads them (checked against
`systemd-analyze calendar` where it is installed), their cron lines, the command's words quoted for systemd's
ExecStart= and for the shell cron runs, unit names that carry the project, and the values refused when the config is
read (exit 2, naming the file and the key)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aixsss_ops.config import parse_calendar
from aixsss_ops.usecases import pitr
from tests.cli import EXE, run_cli

CALENDARS = [
    "Sun *-*-* 03:00:00", "Mon..Sat *-*-* 03:00:00", "Sun..Sun 03:00", "Mon..Sun 03:00", "Sat..Sun 04:00",
    "mon 03:00", "MONDAY 03:00", "Mon-Wed 03:00", "Mon,Wed..Fri 03:00", "Thu,Mon..Tue 03:00", "3:0", "03:00:00.5",
    "*-*-01 03:00", "*-02~03 03:00", "Mon *-*-* 03:00 UTC", "Mon 03:00 Europe/Berlin", "03:00 utc", "0/6:00",
    "*:0/15", "1..5/2:00", "Mon 0..23/4:0,30", "*-*-1..5 03:00", "2026-*~01..03", "Mon", "2026-12-31", "*-*-*",
    "daily", "hourly", "weekly", "monthly", "annually", "quarterly", "semiannually", "minutely", "*:*:*",
    # refused
    "Sun *-*-* 25:00:00", "Wed 24:00", "Wed 23:60", "Mon *-*-* 03:00:60", "Fri..Mon 01:00", "Sun..Sat 1:00",
    "Mo 03:00", "Monxyz 01:00", "Mon..Fri/2 03:00", "03:00 Mon", "* 03:00", "*-13-01 00:00", "*-*-32", "8..5:00",
    "03:00 UTC+3", "Sun 03:00 Nowhere/City", "Mon,,Tue 03:00", "1969-01-01", "*/15:00", "0/0:00",
    "Mon 03:00 03:00", "03:00:00:00",
]
REFUSED = set(CALENDARS[CALENDARS.index("Sun *-*-* 25:00:00"):])


def _parses(text: str) -> bool:
    try:
        parse_calendar(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("calendar", CALENDARS)
def test_a_calendar_is_taken_or_refused_as_systemd_does(calendar):
    assert _parses(calendar) is (calendar not in REFUSED)
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=30)
        assert (r.returncode == 0) is (calendar not in REFUSED), r.stderr


@pytest.mark.parametrize(("calendar", "cron"), [
    ("Sun *-*-* 03:00:00", "0 3 * * 0"), ("Sun..Sun 03:00", "0 3 * * 0"), ("Sunday..Sunday 03:00", "0 3 * * 0"),
    ("Mon..Sun 03:00", "0 3 * * *"), ("Sat..Sun 04:00", "0 4 * * 0,6"), ("Mon..Sat *-*-* 03:00:00", "0 3 * * 1-6"),
    ("Thu,Mon..Tue 01:30", "30 1 * * 1-2,4"), ("Mon-Wed 02:00", "0 2 * * 1-3"), ("*-*-* 0/6:15", "15 0,6,12,18 * * *"),
    ("daily", "0 0 * * *"), ("weekly", "0 0 * * 1"),
    ("*-*-01 03:00:00", None), ("Sun *-*-* 03:00:30", None), ("Mon 03:00 UTC", None), ("2026-*-* 03:00", None),
])
def test_the_cron_line_of_a_calendar_runs_on_the_same_days_or_there_is_none(calendar, cron):
    assert pitr.cron_of(calendar) == cron


def _cfg(folder: Path, name: str = "ops.toml", project: str = "aixsss", **backup) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'project = "{project}"', f"state_dir = {json.dumps(str(folder / 'state'))}", "[backup]",
             *(f"{k} = {json.dumps(v)}" for k, v in backup.items())]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("line", "said"), [
    ("pitr = 1", "backup.pitr: expected a boolean, got an integer"),
    ("encrypt = 0", "backup.encrypt: expected a boolean, got an integer"),
    ("rpo_seconds = 2000000000", "backup.rpo_seconds: expected a number <= 1073741823"),
    ("pitr_retention_days = 10000000", "backup.pitr_retention_days: expected an integer <= 9999999"),
    ('pitr_full_calendar = "Sun *-*-* 25:00:00"', "backup.pitr_full_calendar: 'Sun *-*-* 25:00:00' is not a systemd "
                                                  "OnCalendar expression: hour 25 is outside 0..23"),
    ('pitr_incr_calendar = "Mo..Sa 03:00"', "backup.pitr_incr_calendar: 'Mo..Sa 03:00' is not a systemd OnCalendar "
                                            "expression: weekday 'mo..sa': not a day name"),
    ('pitr_incr_calendar = "Mon 03:61"', "minute 61 is outside 0..59"),
])
def test_backup_settings_that_would_fail_at_run_time_are_refused_when_the_config_is_read(tmp_path, line, said):
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f"[backup]\n{line}\n")
    r = run_cli("config", "show", config=cfg)
    assert r.code == 2 and f"{cfg}: " in r.stderr and said in r.stderr, r.output


def test_the_largest_values_each_takes_and_a_boolean_word_from_the_environment_are_taken(tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text("[backup]\nrpo_seconds = 1073741823\npitr_retention_days = 9999999\npitr = false\n")
    r = run_cli("--json", "config", "show", config=cfg, env={"AIXSSS_OPS_BACKUP__PITR": "yes"})
    assert r.code == 0, r.output
    assert (r.json["backup"]["pitr"], r.json["backup"]["rpo_seconds"]) == (True, 1073741823)
    r = run_cli("config", "show", config=cfg, env={"AIXSSS_OPS_BACKUP__PITR": "2"})
    assert r.code == 2 and "AIXSSS_OPS_BACKUP__PITR: backup.pitr: expected a boolean" in r.stderr, r.output


def _systemd_argv(line: str) -> list[str]:
    """An ExecStart= value as systemd.service(5) reads it: specifiers (only ``%%`` here), words split at blanks with
    double quotes and C escapes, then ``$$`` (any other ``$`` would be a variable)."""
    assert not re.search(r"%[^%]", line.replace("%%", "")), line
    line = line.replace("%%", "%")
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        word = ""
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\":
                    nxt = line[i + 1]
                    if nxt == "x":
                        word += chr(int(line[i + 2:i + 4], 16))
                        i += 4
                        continue
                    assert nxt in '\\"', line
                    word += nxt
                    i += 2
                    continue
                word += line[i]
                i += 1
            i += 1
            assert i == len(line) or line[i] == " ", line
        else:
            while i < len(line) and line[i] != " ":
                assert line[i] not in "\\\"'", line
                word += line[i]
                i += 1
        assert not re.search(r"\$[^$]", word.replace("$$", "")), word
        words.append(word.replace("$$", "$"))
    return words


def _cron_argv(line: str) -> list[str]:
    """A crontab line's command as cron runs it (Vixie cron: ``\\%`` is a ``%``, a bare ``%`` ends the command) and
    then /bin/sh: the words the program gets."""
    command = line.split(" ", 5)[5]
    out, escaped = "", False
    for ch in command:
        if escaped:
            out = out[:-1] + ch if ch == "%" else out + ch
            escaped = False
            continue
        if ch == "%":
            break
        escaped = ch == "\\"
        out += ch
    r = subprocess.run(["/bin/sh", "-c", "argv() { printf '%s\\0' \"$@\"; }; argv " + out], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("name", ["my ops%d.toml", "it's $HOME \"q\" %%n \\%x.toml", "tab\there;`x`.toml"])
def test_the_units_and_the_cron_lines_run_the_config_as_named(tmp_path, name):
    """A config path with blanks, ``%``, ``$``, quotes, backslashes, a tab: systemd and cron both hand
    `backup base` exactly that path."""
    cfg = _cfg(tmp_path / "dir with space", name, pitr=True, pitr_full_calendar="Sun..Sun 03:00",
               pitr_incr_calendar="Mon..Sat 03:00")
    r = run_cli("--json", "backup", "schedule", config=cfg)
    assert r.code == 0, r.output
    d = r.json
    for kind in ("full", "incr"):
        want = [EXE, "--config", str(cfg.resolve()), "--yes", "backup", "base", "--type", kind]
        service = d["units"][f"aixsss-ops-aixsss-backup-{kind}.service"]
        [exec_start] = [ln for ln in service.splitlines() if ln.startswith("ExecStart=")]
        assert _systemd_argv(exec_start[len("ExecStart="):]) == want, exec_start
        assert "\n" not in d["cron"][kind]
        assert _cron_argv(d["cron"][kind]) == want, d["cron"][kind]
    assert d["cron"]["full"].startswith("0 3 * * 0 ") and d["cron"]["incr"].startswith("0 3 * * 1-6 ")


def test_the_units_carry_the_project_so_two_stacks_keep_their_own(tmp_path):
    names = []
    for project in ("shop", "blog"):
        cfg = _cfg(tmp_path / project, project=project, pitr=True)
        r = run_cli("--json", "backup", "schedule", config=cfg)
        assert r.code == 0, r.output
        assert sorted(r.json["units"]) == sorted(f"aixsss-ops-{project}-backup-{k}.{u}" for k in ("full", "incr")
                                                 for u in ("service", "timer"))
        assert r.json["timers"] == [f"aixsss-ops-{project}-backup-full.timer",
                                    f"aixsss-ops-{project}-backup-incr.timer"]
        names += r.json["units"]
        human = run_cli("backup", "schedule", config=cfg)
        assert f"systemctl enable --now aixsss-ops-{project}-backup-full.timer aixsss-ops-{project}-backup-incr.timer" \
            in human.stdout, human.output
    assert len(set(names)) == 8


def test_a_config_path_with_a_line_break_is_refused(tmp_path):
    cfg = _cfg(tmp_path / "a\nb", pitr=True)
    r = run_cli("backup", "schedule", config=cfg)
    assert r.code == 2 and "holds a line break" in r.stderr, r.output
    assert os.path.exists(cfg)
