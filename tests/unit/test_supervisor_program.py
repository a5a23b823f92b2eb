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


def test_a_process_that_proves_its_readiness_is_started_after_one_second(tmp_path):
    """supervisord counts a process as started once it ran ``startsecs``: 1 s where a readiness check (an answer,
    a log line, a Redis client) proves more, 2 s for a process that can only keep running."""
    from aixsss_ops.config import load_config
    from aixsss_ops.context.layout import Layout
    from aixsss_ops.runtime.local_specs import app_processes

    toml = tmp_path / "ops.toml"
    toml.write_text('[app.processes.api]\ncommand = ["api"]\nport_env = "PORT"\n'
                    '[app.processes.worker]\ncommand = ["w"]\nready = {log = "consuming"}\n'
                    '[app.processes.mailer]\ncommand = ["m"]\nready = {redis_client = "bull:"}\n'
                    '[app.processes.cron]\ncommand = ["c"]\n')
    cfg = load_config(toml)
    defs = {d.service: d.program for d in app_processes(cfg, Layout(cfg.state), "blue", tmp_path, "1.0.0")}
    assert {name: p.startsecs for name, p in defs.items()} == {"api": 1, "worker": 1, "mailer": 1, "cron": 2}
