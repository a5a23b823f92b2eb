"""A program's section as supervisord reads it: its own parser and expansion give back the argv, folder and
environment exactly, ``%`` included (supervisord formats ``%(name)s`` in those values)."""

from __future__ import annotations

import shlex
from pathlib import Path

from supervisor.options import UnhosedConfigParser

from aixsss_ops.runtime.supervisor import Program


def test_percent_signs_survive_supervisords_expansion(tmp_path):
    argv = ["postgres", "-c", "archive_command=pgbackrest archive-push %p", "-c", "log_line_prefix=%m [%p] "]
    prog = Program("postgres", argv, directory=tmp_path / "100%", environment={"FMT": "%(here)s-50%"})
    parser = UnhosedConfigParser()
    parser.read_string(prog.render(Path("/var/log/x%d.log")))
    section = "program:postgres"
    expansions = {"here": "/etc/sv", "program_name": "postgres", "process_num": 0, "group_name": "postgres",
                  "host_node_name": "h"}
    assert shlex.split(parser.saneget(section, "command", expansions=expansions)) == argv
    assert parser.saneget(section, "directory", expansions=expansions) == str(tmp_path / "100%")
    assert parser.saneget(section, "stdout_logfile", expansions=expansions) == "/var/log/x%d.log"
    assert parser.saneget(section, "environment", expansions=expansions) == 'FMT="%(here)s-50%"'
