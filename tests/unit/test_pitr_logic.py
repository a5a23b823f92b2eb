"""Point-in-time recovery's pure logic: target times, pgBackRest's info and repo listings, the window, the base
backup and timeline a target needs, the config and archive settings the stack writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aixsss_ops.backup import pitr, pitr_sites
from aixsss_ops.errors import UsageError
from aixsss_ops.runtime.pg_cluster import Archiving, Cluster

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("-15m", NOW - timedelta(minutes=15)),
    ("-90s", NOW - timedelta(seconds=90)),
    ("- 2h", NOW - timedelta(hours=2)),
    ("-1d", NOW - timedelta(days=1)),
    ("2026-12-06T11:00:00Z", datetime(2026, 12, 6, 11, tzinfo=UTC)),
    ("2026-12-06T12:30:00+01:00", datetime(2026, 12, 6, 11, 30, tzinfo=UTC)),
    ("2026-12-06 11:00:00.250+00:00", datetime(2026, 12, 6, 11, 0, 0, 250000, tzinfo=UTC)),
])
def test_target_times(text, expected):
    assert pitr.parse_target(text, NOW) == expected


@pytest.mark.parametrize("text", ["2026-12-06T11:00:00", "yesterday", "-15", "15m", ""])
def test_bad_target_times_are_usage_errors(text):
    with pytest.raises(UsageError):
        pitr.parse_target(text, NOW)


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


INFO = [{
    "name": "aixsss", "status": {"code": 0, "message": "ok"},
    "archive": [{"id": "15-1", "min": "000000010000000000000003", "max": "00000002000000000000000A"}],
    "backup": [
        {"label": "20261206-100000F_20261206-110000I", "type": "incr", "prior": "20261206-100000F",
         "timestamp": {"start": _epoch(NOW - timedelta(hours=1)), "stop": _epoch(NOW - timedelta(minutes=59))},
         "archive": {"start": "000000010000000000000007", "stop": "000000010000000000000007"},
         "info": {"size": 1000, "repository": {"delta": 10}}},
        {"label": "20261206-100000F", "type": "full",
         "timestamp": {"start": _epoch(NOW - timedelta(hours=2)), "stop": _epoch(NOW - timedelta(minutes=119))},
         "archive": {"start": "000000010000000000000003", "stop": "000000010000000000000003"},
         "info": {"size": 1000, "repository": {"delta": 300}}},
    ],
}]


def test_info_window_and_the_base_backup_a_target_needs():
    info = pitr.parse_info(json.dumps(INFO), "aixsss")
    assert info.exists and info.archive_id == "15-1"
    assert [b.type for b in info.backups] == ["full", "incr"]  # oldest first
    win = pitr.window(info, NOW)
    assert win.start == NOW - timedelta(minutes=119) and win.end == NOW
    assert pitr.choose_backup(info, NOW - timedelta(minutes=90)).type == "full"
    assert pitr.choose_backup(info, NOW - timedelta(minutes=30)).type == "incr"
    with pytest.raises(UsageError, match="outside the point-in-time recovery window"):
        pitr.choose_backup(info, NOW - timedelta(hours=3))
    assert not pitr.parse_info("[]", "aixsss").exists
    missing = [{"name": "aixsss", "status": {"code": 1, "message": "missing stanza path"}}]
    assert not pitr.parse_info(json.dumps(missing), "aixsss").exists


def test_repo_listing_segments_and_timelines():
    listing = {
        ".": {"type": "path"},
        "0000000100000000": {"type": "path"},
        "0000000100000000/000000010000000000000003-aa.lz4": {"type": "file", "size": 100, "time": _epoch(NOW)},
        "0000000100000000/000000010000000000000003.00000028.backup": {"type": "file", "size": 1, "time": 1},
        "0000000100000000/000000010000000000000004-bb.lz4": {"type": "file", "size": 200, "time": _epoch(NOW)},
        "00000002.history": {"type": "file", "size": 42, "time": _epoch(NOW - timedelta(minutes=10))},
        "0000000200000000/000000020000000000000005-cc.lz4": {"type": "file", "size": 300, "time": _epoch(NOW)},
    }
    files, timelines = pitr.parse_repo_ls(json.dumps(listing))
    assert [f.segment for f in files] == ["000000010000000000000003", "000000010000000000000004",
                                          "000000020000000000000005"]
    assert timelines == {2: NOW - timedelta(minutes=10)}
    assert [f.size for f in pitr.wal_after(files, "000000010000000000000004")] == [200, 300]
    assert pitr.timeline_at(timelines, NOW - timedelta(minutes=20)) is None  # before the restore that began TL 2
    assert pitr.timeline_at(timelines, NOW) == 2
    assert pitr.segment_end_lsn("000000010000000100000002") == (1 << 32) + 3 * 16 * 2**20


def test_the_archive_command_lives_in_an_included_file_and_the_config_names_every_path(tmp_path: Path):
    arch = Archiving(root=tmp_path / "pgbackrest", socket_dir=tmp_path / "run", stanza="aixsss", timeout_s=5)
    settings = arch.settings()
    assert "%" not in " ".join(settings)  # supervisord formats % in its command lines
    assert "archive_timeout=5" in settings and "archive_mode=on" in settings
    inc = arch.include_text()
    assert inc.rstrip().endswith("archive-push %p'") and f"--config={arch.config}" in inc
    cl = Cluster(datadir=tmp_path / "data", port=5999, host="127.0.0.1", os_user="postgres")
    conf = arch.render(cl, "aixsss_admin", {"repo1-path": "/r"}, 7)
    lines = set(conf.splitlines())
    assert {"repo1-path=/r", "repo1-retention-full-type=time", "repo1-retention-full=7", "archive-async=y",
            "[aixsss]", f"pg1-path={tmp_path / 'data'}", "pg1-port=5999", f"pg1-socket-path={tmp_path / 'run'}",
            "pg1-user=aixsss_admin"} <= lines


def test_schedule_follows_the_configured_calendars_and_needs_pitr(tmp_path: Path):
    """`backup schedule`: the cron lines say the configured calendars (a calendar cron cannot say is named, its timer
    stays); with pitr off it is refused (exit 2), as `backup base` would be; a calendar that could end its unit's
    line is refused when the config is read."""
    from tests.cli import run_cli

    on = tmp_path / "on"
    on.mkdir()
    _cfg(on, pitr=True, pitr_full_calendar="*-*-* 01:30:00", pitr_incr_calendar="*-*-01 02:00:00")
    r = run_cli("--json", "backup", "schedule", config=on / "ops.toml")
    assert r.code == 0, r.output
    assert r.json["cron"]["full"].startswith("30 1 * * * ") and r.json["cron"]["full"].endswith("--type full")
    assert r.json["cron"]["incr"] is None
    assert "OnCalendar=*-*-01 02:00:00" in r.json["units"]["aixsss-ops-aixsss-backup-incr.timer"]
    r = run_cli("backup", "schedule", config=on / "ops.toml")
    assert "# no cron line says OnCalendar=*-*-01 02:00:00 (incr): use its timer" in r.stdout, r.output
    off = tmp_path / "off"
    off.mkdir()
    _cfg(off)
    r = run_cli("backup", "schedule", config=off / "ops.toml")
    assert r.code == 2 and "point-in-time recovery is off" in r.stderr, r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ops.toml").write_text('[backup]\npitr = true\npitr_full_calendar = "daily\\nExecStartPre=/bin/true"\n')
    r = run_cli("backup", "schedule", config=bad / "ops.toml")
    assert r.code == 2 and "pitr_full_calendar" in r.stderr, r.output


def test_a_stanza_whose_repository_cannot_be_read_does_not_exist_yet():
    """pgBackRest's status 99 ("other", e.g. the repository's bucket is missing): create the stanza (which makes the
    bucket first) rather than take it for an existing one."""
    other = [{"name": "aixsss", "status": {"code": 99, "message": "other"}}]
    assert not pitr.parse_info(json.dumps(other), "aixsss").exists
    assert pitr.parse_info(json.dumps([{"name": "aixsss", "status": {"code": 2}}]), "aixsss").exists


def _cfg(tmp_path: Path, runtime: str = "local", **backup):
    from aixsss_ops.config import load_config

    lines = [f'runtime = "{runtime}"', f'state_dir = "{tmp_path / "state"}"', "[backup]",
             *(f"{k} = {json.dumps(v)}" for k, v in backup.items())]
    (tmp_path / "ops.toml").write_text("\n".join(lines) + "\n")
    return load_config(tmp_path / "ops.toml")


def test_the_docker_postgres_container_archives_through_pgbackrest_only_with_pitr(tmp_path: Path):
    from aixsss_ops.runtime import docker_specs as specs

    off = specs.postgres(_cfg(tmp_path, "docker"))
    assert "pgbackrest" not in " ".join(off.command) and set(off.volumes) == {"pgdata"}
    on = specs.postgres(_cfg(tmp_path, "docker", pitr=True, rpo_seconds=7, pitr_retention_days=3))
    script = on.command[-1]
    assert on.volumes == {"pgdata": specs.PG_HOME, "pgbackrest": specs.PGBACKREST}
    assert "-c archive_mode=on" in script and "-c archive_timeout=7" in script
    assert f"'archive_command=pgbackrest --config={specs.PGBACKREST_CONF} --stanza=aixsss archive-push %p'" in script
    assert script.index(specs.PITR_SWAP) < script.index("exec postgres")  # the moves before Postgres starts
    assert on.secrets["pgbackrest_conf"] == ("pgbackrest", "conf")  # a secret file, never the environment
    assert f"cat {specs.SECRETS / 'pgbackrest_conf'} > {specs.PGBACKREST_CONF}.tmp" in script
    assert "s3_ca" not in on.secrets
    conf = set(specs.pgbackrest_conf(_cfg(tmp_path, "docker", pitr=True, rpo_seconds=7,
                                          pitr_retention_days=3)).splitlines())
    assert {f"repo1-path={specs.PGBACKREST}/repo", "repo1-retention-full=3", f"pg1-path={specs.PG_DATA}",
            f"pg1-socket-path={specs.PG_SOCKETS}", "archive-async=y"} <= conf


def test_an_s3_repository_on_docker_goes_through_the_store_container_https_port(tmp_path: Path):
    from cryptography import x509

    from aixsss_ops.context.layout import Layout
    from aixsss_ops.runtime import docker_specs as specs
    from aixsss_ops.runtime import pgbackrest_repo
    from aixsss_ops.runtime.docker import DockerRuntime

    cfg = _cfg(tmp_path, "docker", pitr=True, destination="s3", s3_bucket="pitr-repo", s3_prefix="b")
    s3 = specs.s3(cfg)
    script = s3.command[-1]
    assert f"-s3.port.https={specs.PORTS['s3_tls']}" in script and f"-s3.port={specs.PORTS['s3']}" in script
    assert {"s3_tls_cert": ("tls", "cert"), "s3_tls_key": ("tls", "key")}.items() <= s3.secrets.items()
    pg = specs.postgres(cfg)
    assert pg.secrets["s3_ca"] == ("tls", "ca") and pg.secrets["pgbackrest_conf"] == ("pgbackrest", "conf")
    conf = dict(line.split("=", 1) for line in specs.pgbackrest_conf(cfg).splitlines() if "=" in line)
    assert (conf["repo1-type"], conf["repo1-s3-endpoint"], conf["repo1-storage-port"], conf["repo1-s3-bucket"],
            conf["repo1-path"], conf["repo1-storage-ca-file"]) == (
        "s3", "s3", str(specs.PORTS["s3_tls"]), "pitr-repo", "/b.pgbackrest", str(specs.SECRETS / "s3_ca"))
    assert conf["repo1-s3-key-secret"] == cfg.s3.secret_key.get_secret_value()
    for spec in (s3, pg):  # the keys only in the secret files
        definition = json.dumps([spec.command, spec.environment, spec.labels])
        assert cfg.s3.secret_key.get_secret_value() not in definition
    files = DockerRuntime(cfg, Layout(cfg.state)).secret_files(pg)
    assert files["pgbackrest_conf"].decode() == specs.pgbackrest_conf(cfg)
    cert = x509.load_pem_x509_certificate(DockerRuntime(cfg, Layout(cfg.state)).secret_files(s3)["s3_tls_cert"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pgbackrest_repo.NETWORK_NAME in names.get_values_for_type(x509.DNSName)
    assert files["s3_ca"] == pgbackrest_repo.tls_files(Layout(cfg.state))["ca"].read_bytes()
    plain = specs.s3(_cfg(tmp_path, "docker", pitr=True))  # a repository in the volume: no HTTPS port
    assert "-s3.port.https" not in plain.command[-1] and "s3_tls_cert" not in plain.secrets


def test_pitr_runs_on_swarm_as_on_docker_and_compose_render_refuses_it(tmp_path: Path):
    """The swarm's Postgres service is the docker container spec (pgBackRest's volume, config secret, archiving, the
    folder moves before Postgres starts), pinned to the infra node; compose has no source for the config secret."""
    from aixsss_ops.compose.render import render_files
    from aixsss_ops.runtime import docker_specs as specs
    from aixsss_ops.runtime import swarm_specs as sw

    cfg = _cfg(tmp_path, "swarm", pitr=True)
    pg = next(s for s in sw.infra(cfg) if s.service == "postgres")
    assert pg == specs.postgres(cfg)
    assert pg.volumes == {"pgdata": specs.PG_HOME, "pgbackrest": specs.PGBACKREST} and pg.init
    assert pg.secrets["pgbackrest_conf"] == ("pgbackrest", "conf")
    kw = sw.service_kwargs(cfg, pg, image=pg.image, digest="d", infra_node="n1", secrets=[], count=1)
    assert kw["constraints"] == ["node.hostname==n1"] and kw["init"] is True
    assert {m["Target"]: m["Source"] for m in kw["mounts"]} == {specs.PG_HOME: "aixsss-pgdata",
                                                               specs.PGBACKREST: "aixsss-pgbackrest"}
    with pytest.raises(UsageError, match="backup.pitr"):
        render_files(_cfg(tmp_path, "docker", pitr=True))


def test_an_s3_repository_on_the_embedded_store_goes_through_its_tls_port(tmp_path: Path):
    from aixsss_ops.context.layout import Layout
    from aixsss_ops.runtime import local_specs, pgbackrest_repo

    cfg = _cfg(tmp_path, pitr=True, destination="s3", s3_bucket="pitr-repo", s3_prefix="b")
    lay = Layout(cfg.state)
    tls = local_specs.s3_tls_port(cfg)
    assert tls and tls != cfg.ports.s3
    repo = local_specs.pgbackrest_repo_options(cfg, lay)
    assert (repo["repo1-storage-port"], repo["repo1-s3-endpoint"], repo["repo1-s3-uri-style"]) == \
        (str(tls), cfg.host, "path")
    assert repo["repo1-storage-ca-file"] == str(local_specs.s3_ca_for_pgbackrest(lay))
    argv = local_specs.s3(cfg, lay).program.argv
    assert f"-s3.port.https={tls}" in argv and f"-s3.port={cfg.ports.s3}" in argv  # the plain port stays
    files = pgbackrest_repo.tls_files(lay)
    first = files["cert"].read_bytes()
    pgbackrest_repo.ensure_tls(cfg, lay)
    assert files["cert"].read_bytes() == first  # kept while valid for this host
    assert local_specs.s3_tls_port(_cfg(tmp_path, pitr=True)) is None  # a local repository: no TLS port


def test_the_wal_check_and_the_object_listing_run_while_pgbackrest_restores():
    """restore --to-time: the checks run beside the restore (which reads no WAL), not before it."""
    import threading

    from aixsss_ops.usecases.pitr_restore import _while_restoring

    checking = threading.Event()
    seen = {}

    def check():
        checking.set()
        return "archived"

    def restore(abort):
        seen["during"] = checking.wait(5)  # sequential checks would only start after this returns

    assert _while_restoring(restore, [check, lambda: "objects"]) == (["archived", "objects"], None)
    assert seen["during"]


def test_the_app_is_stopped_beside_the_restore_once_the_checks_have_passed():
    """``then`` (the app's stop) runs while pgBackRest still restores, given the checks' results; never after a
    failing check, nor once the restore has failed by itself; and it has ended whenever _while_restoring returns."""
    import threading
    import time

    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases.pitr_restore import _while_restoring

    stopping = threading.Event()
    seen = {}

    def then(results):
        seen["results"] = results
        stopping.set()
        return "listing"

    def restore(abort):
        seen["during"] = stopping.wait(5)  # then() only after the restore would make this False

    assert _while_restoring(restore, [lambda: "archived", lambda: "objects"], then) == (["archived", "objects"],
                                                                                        "listing")
    assert seen == {"results": ["archived", "objects"], "during": True}

    called = []

    def bad_check():
        raise UsageError("outside the point-in-time recovery window")

    with pytest.raises(UsageError):
        _while_restoring(lambda abort: abort.wait(5), [bad_check], lambda r: called.append(r))
    assert called == []

    slow = threading.Event()

    def failing_restore(abort):
        raise OpsError("pgbackrest restore failed (exit 41)")

    def slow_check():
        slow.wait(0.5)
        return "archived"

    with pytest.raises(OpsError, match="exit 41"):
        _while_restoring(failing_restore, [slow_check], lambda r: called.append(r))
    assert called == []  # the restore had failed before the checks passed: the app is left running

    ended = []

    def slow_then(results):
        slow.wait(0.3)
        ended.append(results)

    def failing_later(abort):
        stopping.clear()
        time.sleep(0.05)  # the checks pass and then() begins
        raise OpsError("pgbackrest restore failed (exit 41)")

    with pytest.raises(OpsError, match="exit 41"):
        _while_restoring(failing_later, [lambda: "archived"], slow_then)
    assert ended == [["archived"]]  # begun before the failure: it had ended when the error was raised


def test_a_failing_check_stops_the_restore_and_is_raised():
    import threading

    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases.pitr_restore import _while_restoring

    seen = {}

    def check():
        raise UsageError("outside the point-in-time recovery window")

    def restore(abort: threading.Event):
        seen["aborted"] = abort.wait(5)
        if seen["aborted"]:
            raise OpsError("pgbackrest restore stopped")

    with pytest.raises(UsageError, match="outside the point-in-time recovery window"):
        _while_restoring(restore, [check, lambda: "objects"])
    assert seen["aborted"]

    def failing_restore(abort):
        raise OpsError("pgbackrest restore failed (exit 41)")

    with pytest.raises(OpsError, match="exit 41"):  # a restore that fails by itself: its own error
        _while_restoring(failing_restore, [lambda: "archived"])


def test_an_aborted_pgbackrest_command_stops_with_its_worker_processes():
    """HostSite.run with ``abort``: the command and the processes it started are gone before it raises (the caller
    then removes the folder they wrote into)."""
    import getpass
    import threading
    import time
    from types import SimpleNamespace

    from aixsss_ops.errors import OpsError

    marker = f"30.{time.monotonic_ns()}"  # a duration no other sleep has: the child's command line
    from aixsss_ops.runtime.pg_cluster import Cluster

    cluster = Cluster(Path("/nonexistent"), 5432, "127.0.0.1", getpass.getuser())
    arch = SimpleNamespace(stanza="aixsss", root=Path("/nonexistent"),
                           command=lambda *a: ["sh", "-c", f"sleep {marker} & wait"])
    site = pitr_sites.HostSite(cluster, arch, None)
    abort = threading.Event()
    threading.Timer(0.3, abort.set).start()
    t = time.monotonic()
    with pytest.raises(OpsError, match="stopped"):
        site.run(("restore",), 60, abort)
    assert time.monotonic() - t < 5
    left = []
    for p in Path("/proc").glob("[0-9]*/stat"):
        try:
            alive = p.read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and marker.encode() in (p.parent / "cmdline").read_bytes():
                left.append(p.parent.name)
        except OSError:
            pass
    assert not left, left


def _listing(history_at: datetime | None = None) -> tuple[list[pitr.WalFile], dict[int, datetime]]:
    """A repo-ls of the archive: one segment archived at NOW, and timeline 2's history file when ``history_at``."""
    ls = {"0000000100000000/000000010000000000000007-aa.lz4": {"type": "file", "size": 100, "time": _epoch(NOW)}}
    if history_at is not None:
        ls["00000002.history"] = {"type": "file", "size": 42, "time": _epoch(history_at)}
    return pitr.parse_repo_ls(json.dumps(ls))


class _Site:
    """A site on folders of tmp_path; what it did, in order, in ``log``."""

    def __init__(self, data: Path):
        self.data = data
        self.log: list[tuple] = []

    def mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        self.log.append(("mkdir", path.name))

    def exists(self, path: Path) -> bool:
        return path.exists()

    def rmtree(self, path: Path) -> None:
        import shutil

        shutil.rmtree(path)
        self.log.append(("rmtree", path.name))

    def switch(self, runtime, moves, strict: bool = True) -> None:
        for a, b in moves:
            a.rename(b)

    def settle(self, runtime, kept: Path, new: Path) -> list[str]:
        return []


class _Engine:
    """pgBackRest stand-in: ``wal_files`` answers each listing in turn; ``restore`` writes the timeline it was given
    into its folder, which must be empty (as pgBackRest's restore requires)."""

    stanza = "aixsss"

    def __init__(self, site: _Site, journal: Path, listings: list):
        self.site, self.journal, self.listings = site, journal, listings
        self.restores: list[tuple[int | None, bool]] = []

    def info(self) -> pitr.Info:
        return pitr.parse_info(json.dumps(INFO), "aixsss")

    def check(self) -> None:
        pass

    def wal_files(self, archive_id: str | None):
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]  # the last one stays

    def history(self, archive_id: str | None, timeline: int | None) -> dict[int, int]:
        return {1: 1 << 40} if timeline and timeline > 1 else {}  # timeline 2 left timeline 1 after every backup

    gap = pitr.Engine.gap

    def restore(self, into: Path, label: str, target: datetime, timeline: int | None, abort=None) -> None:
        assert label == "20261206-100000F_20261206-110000I"  # the incr: the newest base backup ending before T
        assert list(into.iterdir()) == []
        assert json.loads(self.journal.read_text())["new"] == str(into)  # an interrupted restore is undone
        (into / "restored_on").write_text(str(timeline))
        self.restores.append((timeline, abort is not None))
        self.site.log.append(("restore", timeline))


def _dep(data: Path):
    from types import SimpleNamespace

    return SimpleNamespace(layout=SimpleNamespace(pg_data=data, deploy_dir=data.parent / "deploy"), s3=None,
                           cfg=SimpleNamespace(supervisor=SimpleNamespace(stop_timeout=1), external=()))


def _restore_env(tmp_path: Path, monkeypatch, listings: list, engine_cls=None):
    """restore_to_time's collaborators on folders of tmp_path, at NOW; (data folder, site, engine)."""
    from types import SimpleNamespace

    from aixsss_ops.usecases import pitr_plan as planning
    from aixsss_ops.usecases import pitr_restore as uc

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return NOW

    data = tmp_path / "pg" / "data"
    data.mkdir(parents=True)
    (data / "live").write_text("before the restore")
    site = _Site(data)
    eng = (engine_cls or _Engine)(site, tmp_path / "pg" / "pitr-restore.json", listings)
    runtime = SimpleNamespace(status=lambda: [], state=lambda *a: "RUNNING", start=lambda *a: None)
    for module in (uc, planning):
        monkeypatch.setattr(module, "datetime", Clock)
        monkeypatch.setattr(module, "engine", lambda _dep: eng)
    monkeypatch.setattr(planning, "marker", lambda _dep: True)
    monkeypatch.setattr(planning, "live", lambda _dep: 1)
    monkeypatch.setattr(planning, "objects_at", lambda _dep, _t: (None, None))
    monkeypatch.setattr(uc, "_stack", lambda _dep: SimpleNamespace(runtime=runtime, engine_problem=lambda: None))
    monkeypatch.setattr(uc, "_recovery_point", lambda _dep, _rt: NOW - timedelta(minutes=31))
    monkeypatch.setattr(uc, "_rekey", lambda _dep, _w: None)
    return data, site, eng


@pytest.mark.parametrize(("before", "after", "restored"), [
    (None, NOW - timedelta(minutes=40), [None, 2]),  # timeline 2 begun before T, listed only after the switch
    (NOW - timedelta(minutes=40), NOW - timedelta(minutes=40), [2]),  # listed both times: one restore
    (None, NOW - timedelta(minutes=10), [None]),  # timeline 2 begun after T: not the one live at T
])
def test_a_timeline_listed_only_after_the_wal_switch_restores_again_on_it(tmp_path: Path, monkeypatch,
                                                                          before, after, restored):
    """restore --to-time on the local runtime: pgBackRest restores on the timeline of the listing made before the
    WAL switch; when the listing after it names another timeline live at T, the partial folder is made anew and
    restored again on that one."""
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [_listing(before), _listing(before), _listing(after)])
    dep = _dep(data)
    said: list[str] = []

    res = uc.restore_to_time(dep, "-30m", say=said.append)

    assert [tl for tl, _abortable in eng.restores] == restored
    assert eng.restores[0][1]  # the first restore stops when a check beside it fails
    partial = "data.pitr-20261206T120000Z.partial"
    again = "timeline 2 was live at 2026-12-06T11:30:00.000000Z: restoring again on it"
    if len(restored) == 2:
        assert site.log == [("mkdir", partial), ("restore", None), ("rmtree", partial), ("mkdir", partial),
                            ("restore", 2)]
        assert again in said
    else:
        assert site.log == [("mkdir", partial), ("restore", restored[0])]
        assert not [m for m in said if "restoring again" in m]
    assert res["timeline"] == restored[-1]
    assert [p.name for p in data.iterdir()] == ["restored_on"]  # the last restore's folder is the live one
    assert (data / "restored_on").read_text() == str(restored[-1])
    assert (data.parent / "data.pre_pitr_20261206T120000Z" / "live").exists()
    assert not (data.parent / partial).exists() and not (data.parent / "pitr-restore.json").exists()


class _StuckEngine(_Engine):
    """A restore whose stop fails once a check beside it has failed: a process of it still writes."""

    def restore(self, into: Path, label: str, target: datetime, timeline: int | None, abort=None) -> None:
        if not self.restores:
            (into / "base").write_text("half restored")
            self.site.log.append(("restore", timeline))
            self.restores.append((timeline, True))
            assert abort is not None and abort.wait(5)
            raise pitr_sites.RestoreNotStopped(f"the pgBackRest restore into {into} did not stop", hint="its log: here")
        super().restore(into, label, target, timeline, abort)


def test_a_restore_that_outlives_its_stop_keeps_its_folder_and_journal_and_the_next_run_clears_them(
        tmp_path: Path, monkeypatch):
    """The WAL check fails while pgBackRest restores, and the restore does not stop: the error says so (it outranks
    the check's), the partial folder is not removed under a writer and the journal stays; the next run settles
    what is left first (the site stops that restore), removes the folder and restores."""
    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr_plan as planning
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 4, engine_cls=_StuckEngine)
    dep = _dep(data)
    calls, real = iter([UsageError("no WAL archived past T"), None]), planning.archived

    def archived(*a):
        err = next(calls)
        if err:
            raise err
        return real(*a)

    monkeypatch.setattr(planning, "archived", archived)
    partial = data.parent / "data.pitr-20261206T120000Z.partial"
    journal = data.parent / "pitr-restore.json"
    with pytest.raises(OpsError) as e:
        uc.restore_to_time(dep, "-30m")
    assert "did not stop" in str(e.value) and not isinstance(e.value, UsageError)
    assert "the live cluster was not touched" in e.value.hint and partial.name in e.value.hint
    assert (partial / "base").read_text() == "half restored" and ("rmtree", partial.name) not in site.log
    assert json.loads(journal.read_text())["new"] == str(partial)
    assert (data / "live").exists()

    settled = []
    monkeypatch.setattr(site, "settle", lambda _rt, kept, new: settled.append(new) or [])
    uc.restore_to_time(dep, "-30m")
    assert settled == [partial]
    assert site.log[site.log.index(("rmtree", partial.name)) + 1] == ("mkdir", partial.name)
    assert (data / "restored_on").exists() and not journal.exists()


class _Runtime:
    """The docker runtime's exec as ContainerSite uses it: the restore's exec blocks until ``release``; the stop
    script answers ``stop_rc``; every argv in ``calls``."""

    def __init__(self, stop_rc: int):
        import threading

        self.stop_rc, self.release, self.calls = stop_rc, threading.Event(), []

    def exec(self, service: str, argv: list[str], timeout: float = 60):
        from types import SimpleNamespace

        self.calls.append(argv)
        rc = 0
        if "restore" in argv:
            self.release.wait(10)
            rc = 143
        elif argv[:2] == ["sh", "-c"] and "kill -TERM" in argv[2]:
            rc = self.stop_rc
            if rc == 0:
                self.release.set()
        return SimpleNamespace(returncode=rc, stdout=b"", stderr=b"")


@pytest.mark.parametrize("stop_rc", [0, 2])
def test_a_container_restore_keeps_its_pid_file_only_when_its_stop_failed(tmp_path: Path, monkeypatch, stop_rc):
    """ContainerSite.run with ``abort``: a stopped restore removes its pid file; one whose processes are still there
    after the wait raises RestoreNotStopped and keeps it, so the next run's settle finds that restore."""
    import threading

    from aixsss_ops.errors import OpsError

    runtime = _Runtime(stop_rc)
    site = pitr_sites.ContainerSite(_cfg(tmp_path, runtime="docker", pitr=True), runtime)
    monkeypatch.setattr(site, "STOP_WAIT", 0.5)
    abort = threading.Event()
    abort.set()
    expected = pitr_sites.RestoreNotStopped if stop_rc else OpsError
    with pytest.raises(expected, match="did not stop" if stop_rc else "restore stopped"):
        site.run(("restore", "--pg1-path=/var/lib/postgresql/data.pitr-x.partial"), 60, abort)
    removed = ["rm", "-f", f"{site.specs.PG_HOME}/{site.PIDFILE}"] in runtime.calls
    assert removed == (not stop_rc)
    runtime.release.set()


def test_settle_stops_a_local_restore_left_running_into_the_partial_folder(tmp_path: Path):
    """HostSite.settle: a process whose arguments name the partial folder as --pg1-path (a pgBackRest restore a
    killed run left) is killed before the folder goes; one naming another folder is left alone."""
    import subprocess
    import sys
    from types import SimpleNamespace

    new, other = tmp_path / "data.pitr-x.partial", tmp_path / "data.pitr-y.partial"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    left = subprocess.Popen([*sleeper, f"--pg1-path={new}"])
    bystander = subprocess.Popen([*sleeper, f"--pg1-path={other}"])
    try:
        arch = SimpleNamespace(stanza="aixsss", root=tmp_path)
        site = pitr_sites.HostSite(SimpleNamespace(datadir=tmp_path / "data"), arch, None)
        done = site.settle(None, tmp_path / "kept", new)
        assert done == ["stopped the pgBackRest restore still running"]
        assert left.wait(5) == -9 and bystander.poll() is None
        assert site.settle(None, tmp_path / "kept", new) == []
    finally:
        for p in (left, bystander):
            p.kill()
            p.wait()


class _AppRuntime:
    """api-blue and worker-blue running; what is stopped and started, in ``log``."""

    def __init__(self):
        self.states = {("api", "blue"): "RUNNING", ("worker", "blue"): "RUNNING"}
        self.log: list[tuple] = []

    def status(self):
        from types import SimpleNamespace

        return [SimpleNamespace(service=s, color=c, state=st) for (s, c), st in self.states.items()]

    def state(self, service, color=None):
        return self.states.get((service, color), "RUNNING")

    def stop(self, service, color=None, wait=True):
        self.states[(service, color)] = "STOPPED"
        self.log.append(("stop", service))

    def start(self, service, color=None):
        self.states[(service, color)] = "RUNNING"
        self.log.append(("start", service))


def test_what_fails_after_the_swap_leaves_the_app_started_and_is_raised_with_what_finishes_it(
        tmp_path: Path, monkeypatch):
    """The restored cluster runs; then the object rewind fails (the store went away) and the app does not get
    ready: the keys are still re-encrypted, the app is still started, and one error names the recovery point, the
    kept folder, both failures and the commands that finish the job."""
    from types import SimpleNamespace

    from aixsss_ops.backup import objects
    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr_plan as planning
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 2)
    runtime = _AppRuntime()
    ready = []

    def wait_ready(defs, say):
        ready.append([d.service for d in defs])
        raise OpsError("worker-blue: not ready within 60s")

    stack = SimpleNamespace(runtime=runtime, wait_ready=wait_ready, engine_problem=lambda: None,
                            app_defs=lambda c: [SimpleNamespace(service=s, color=c) for s in ("api", "worker")])
    monkeypatch.setattr(uc, "_stack", lambda _dep: stack)
    plan = objects.ObjectPlan("app", copy=[{"key": "k", "version_id": "v"}])
    monkeypatch.setattr(planning, "objects_at", lambda _dep, _t: (plan, None))
    monkeypatch.setattr(uc.objects, "rewind_plan", lambda *_a: (None, plan))

    def store_gone(*_a, **_k):
        raise OpsError("object restore: 1 of 1 operation(s) failed, e.g. k: connection refused")

    monkeypatch.setattr(uc.objects, "apply_restore", store_gone)
    rekeyed = []
    monkeypatch.setattr(uc, "_rekey", lambda _dep, _w: rekeyed.append(1) or {"reencrypted": 2})

    with pytest.raises(OpsError) as e:
        uc.restore_to_time(_dep(data), "-30m")
    msg = str(e.value)
    assert msg.startswith("the database is restored to 2026-12-06T11:29:00")
    assert "data.pre_pitr_20261206T120000Z" in msg
    assert "the objects were not rewound: object restore: 1 of 1" in msg
    assert "the app did not get ready: worker-blue: not ready" in msg
    assert "restore --to-time 2026-12-06T11:30:00.000000Z --objects-only" in e.value.hint
    assert rekeyed == [1] and ready == [["api", "worker"]]
    assert runtime.log == [("stop", "api"), ("stop", "worker"), ("start", "api"), ("start", "worker")]
    assert (data / "restored_on").exists() and not (data.parent / "pitr-restore.json").exists()


def test_db_only_lists_no_objects_and_rewinds_none(tmp_path: Path, monkeypatch):
    from aixsss_ops.usecases import pitr_plan as planning
    from aixsss_ops.usecases import pitr_restore as uc

    data, _site, _eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 4)

    def no_store(*_a):
        raise AssertionError("the store was asked")

    monkeypatch.setattr(planning, "objects_at", no_store)
    monkeypatch.setattr(uc.objects, "rewind_plan", no_store)
    plan = uc.restore_to_time(_dep(data), "-30m", dry_run=True, with_objects=False)["plan"]
    assert plan["objects"] is None and not any("objects" in s for s in plan["steps"])
    res = uc.restore_to_time(_dep(data), "-30m", with_objects=False)
    assert res["objects"] is None and (data / "restored_on").exists()


def test_a_run_killed_after_the_swap_is_finished_by_the_next_one(tmp_path: Path, monkeypatch):
    """Killed once the restored folder had taken the live one's place (journal phase "swapping"), before the restored
    cluster was seen promoted: the next run finishes it forward (the restored folder stays live, the previous one
    kept) and starts the app units the killed run had stopped."""
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [])
    runtime = _AppRuntime()
    runtime.states = {("api", "blue"): "STOPPED", ("worker", "blue"): "STOPPED"}
    monkeypatch.setattr(uc, "_stack", lambda _dep: __import__("types").SimpleNamespace(
        runtime=runtime, app_defs=lambda _c: [], wait_ready=lambda _defs, _say: None))
    kept = data.parent / "data.pre_pitr_20261206T120000Z"
    data.rename(kept)
    data.mkdir()
    (data / "restored_on").write_text("2")
    journal = data.parent / "pitr-restore.json"
    journal.write_text(json.dumps({"target": "2026-12-06T11:30:00Z", "new": str(data.parent / "data.pitr-x.partial"),
                                   "kept": str(kept), "stopped": [["api", "blue"], ["worker", "blue"]],
                                   "phase": "swapping"}))
    done = uc.recover_interrupted(_dep(data), eng)
    assert done["target"] == "2026-12-06T11:30:00Z" and done["kept_data_dir"] == str(kept), done
    assert (data / "restored_on").exists() and (kept / "live").exists()
    assert not list(data.parent.glob("data.failed_pitr_*"))
    assert ("start", "api") in runtime.log and ("start", "worker") in runtime.log and not journal.exists()


def test_a_dry_run_leaves_an_interrupted_run_as_it_is_and_says_so(tmp_path: Path, monkeypatch):
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 2)
    partial = data.parent / "data.pitr-x.partial"
    partial.mkdir()
    journal = data.parent / "pitr-restore.json"
    journal.write_text(json.dumps({"target": "2026-12-06T11:30:00Z", "new": str(partial),
                                   "kept": str(data.parent / "data.pre_pitr_x"), "stopped": []}))
    plan = uc.restore_to_time(_dep(data), "-30m", dry_run=True)["plan"]
    assert partial.exists() and journal.exists() and site.log == []
    assert any(f"an interrupted restore --to-time left {partial}" in w for w in plan["warnings"]), plan["warnings"]


def test_a_second_restore_while_one_runs_is_refused_naming_it(tmp_path: Path, monkeypatch):
    """The deploy lock is held for a restore's length: a second restore (or a deploy) is refused and names the first;
    nothing of the second one runs."""
    from aixsss_ops.deploy.lock import DeployLock, LockBusy
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 2)
    dep = _dep(data)
    with DeployLock(dep.layout.deploy_dir) as first:
        first.acquire(0, {"action": "restore --to-time 2026-12-06T11:00:00Z"})
        with pytest.raises(LockBusy, match=r"holds the lock: .*\(restore --to-time 2026-12-06T11:00:00Z"):
            uc.restore_to_time(dep, "-30m")
        with pytest.raises(LockBusy):
            uc.rewind_objects(dep, "-30m")
    assert site.log == [] and eng.restores == []
    uc.restore_to_time(dep, "-30m")  # the lock is free again
    assert (data / "restored_on").exists()


def test_a_replay_that_stops_short_of_t_fails_fast_with_the_reason(monkeypatch):
    """Postgres exits (and the engine restarts it) when replay ends before T: the wait for promotion ends after a
    second of that, not after an hour, with Postgres's reason and what to do."""
    import time
    from types import SimpleNamespace

    from aixsss_ops.backup import postgres
    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr_restore as uc

    class Unreachable:
        def connect(self, timeout=None):
            raise OpsError("connection refused")

    monkeypatch.setattr(uc, "database", lambda _dep: None)
    monkeypatch.setattr(postgres, "admin_target", lambda _db: Unreachable())
    states = iter(["STARTING", "BACKOFF", "STARTING", "BACKOFF", "BACKOFF"] + ["FATAL"] * 1000)
    runtime = SimpleNamespace(state=lambda *_a: next(states), logs=lambda *_a, **_k: (
        "LOG:  starting point-in-time recovery\nFATAL:  " + uc.NOT_REACHED + "\nLOG:  startup process exited"))
    t = time.monotonic()
    with pytest.raises(OpsError, match="ended its replay before reaching the target") as e:
        uc._recovery_point(SimpleNamespace(), runtime)
    assert time.monotonic() - t < 5
    assert uc.NOT_REACHED in e.value.details and "stack up" in e.value.hint


def test_the_marker_of_a_cluster_in_recovery_is_no_marker(monkeypatch):
    """A live cluster still in recovery refuses the marker transaction (read-only): that is "does not answer" (the
    restore warns), not an internal error."""
    import contextlib
    from types import SimpleNamespace

    import psycopg

    from aixsss_ops.backup import postgres
    from aixsss_ops.usecases import pitr_plan as planning

    class ReadOnly:
        def execute(self, *_a):
            raise psycopg.errors.ReadOnlySqlTransaction("cannot execute txid_current() during recovery")

    monkeypatch.setattr(planning, "database", lambda _dep: None)
    monkeypatch.setattr(postgres, "admin_target", lambda _db: SimpleNamespace(
        connect=lambda timeout=None: contextlib.nullcontext(ReadOnly())))
    assert planning.marker(SimpleNamespace()) is False


def test_the_prompt_names_the_absolute_instant_and_bad_input_is_refused_before_it(tmp_path: Path):
    """`restore --to-time -15m` asks about the instant -15m names when the command starts (it does not move while the
    question waits); a T that cannot be read is refused before any question (exit 2)."""
    from tests.cli import run_cli

    cfg = _cfg_file(tmp_path)
    before = datetime.now(UTC)
    r = run_cli("restore", "--to-time", "-15m", config=cfg)  # no terminal, no --yes: refused with the question
    after = datetime.now(UTC)
    assert r.code == 2 and "refusing without a terminal" in r.stderr, r.stderr
    asked = datetime.fromisoformat(r.stderr.split(" to ", 1)[1].split("?", 1)[0].replace("Z", "+00:00"))
    assert before - timedelta(minutes=15, seconds=1) <= asked <= after - timedelta(minutes=15), r.stderr
    for args in (("--to-time", "garbage"), ("--to-time", "garbage", "--objects-only")):
        r = run_cli("restore", *args, config=cfg)
        assert r.code == 2 and "garbage" in r.stderr and "refusing" not in r.stderr, r.stderr


def _cfg_file(tmp_path: Path) -> Path:
    from tests.conftest import stack_config

    return stack_config(tmp_path, backup={"pitr": True})


def test_archiving_that_fails_now_is_a_warning_and_the_window_still_bounds_t(tmp_path: Path, monkeypatch):
    """`pgbackrest check` fails (archive-push broken): a T inside what was archived before still restores, with a
    warning naming the failure; a T past the newest archived WAL is refused by the window."""
    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr_restore as uc

    data, site, eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 4)

    def broken():
        raise OpsError("pgbackrest check failed (exit 82): [082]: WAL segment 0000000100000000000000AA was not "
                       "archived before the 60000ms timeout")

    monkeypatch.setattr(eng, "check", broken)
    res = uc.restore_to_time(_dep(data), "-30m")
    assert any(w.startswith("WAL archiving fails now (pgbackrest check failed (exit 82)") for w in res["warnings"])
    assert (data / "restored_on").exists()

    older = {"0000000100000000/000000010000000000000007-aa.lz4": {"type": "file", "size": 100,
                                                                   "time": _epoch(NOW - timedelta(minutes=10))}}
    data, site, eng = _restore_env(tmp_path / "later", monkeypatch, [pitr.parse_repo_ls(json.dumps(older))] * 2)
    monkeypatch.setattr(eng, "check", broken)
    with pytest.raises(UsageError, match="outside the point-in-time recovery window"):
        uc.restore_to_time(_dep(data), "-1m")  # after the newest archived WAL
    assert not list(data.parent.glob("data.pre_pitr_*")) and not list(data.parent.glob("*.partial"))


def test_a_check_named_alone_that_does_not_apply_is_reported_skipped(tmp_path: Path):
    """`doctor --only backup.pitr-archiving` with pitr off: one skipped finding that says the check does not apply,
    not an empty report."""
    from tests.cli import run_cli

    _cfg(tmp_path)
    r = run_cli("--json", "doctor", "--only", "backup.pitr-archiving", "--only", "backup.pitr-restore",
                config=tmp_path / "ops.toml")
    assert r.code == 0, r.output
    assert [(f["check"], f["status"]) for f in r.json["findings"]] == [
        ("backup.pitr-archiving", "skipped"), ("backup.pitr-restore", "skipped")], r.json
    assert all(f["message"] == "does not apply to this deployment" for f in r.json["findings"])


def test_doctor_names_an_interrupted_restore_but_not_one_running_now(tmp_path: Path):
    from types import SimpleNamespace

    from aixsss_ops.deploy.lock import DeployLock
    from aixsss_ops.doctor.pitr_checks import interrupted_restore

    data = tmp_path / "pg" / "data"
    data.mkdir(parents=True)
    dep = SimpleNamespace(layout=SimpleNamespace(pg_data=data, deploy_dir=tmp_path / "deploy"))
    ctx = SimpleNamespace(cfg=SimpleNamespace(backup=SimpleNamespace(pitr=True)), dep=dep)
    assert [f.status for f in interrupted_restore(ctx)] == ["ok"]
    (data.parent / "pitr-restore.json").write_text(json.dumps(
        {"target": "2026-12-06T11:30:00Z", "new": str(data.parent / "data.pitr-x.partial"), "stopped": [["api", "blue"]]}))
    found = interrupted_restore(ctx)[0]
    assert found.status == "fail" and "data.pitr-x.partial" in found.message and "api-blue" in found.message
    assert "`aixsss-ops --yes restore --to-time 2026-12-06T11:30:00Z` finishes it" in found.fix
    with DeployLock(dep.layout.deploy_dir) as lock:
        lock.acquire(0, {"action": "restore --to-time 2026-12-06T11:30:00Z"})
        found = interrupted_restore(ctx)[0]
        assert found.status == "ok" and "is running" in found.message


def _backup(label: str, wal_start: str, stop_lsn: str | None, stopped: datetime) -> dict:
    return {"label": label, "type": "full", "timestamp": {"start": _epoch(stopped) - 10, "stop": _epoch(stopped)},
            "archive": {"start": wal_start, "stop": wal_start}, "info": {"size": 1},
            **({"lsn": {"start": "0/1", "stop": stop_lsn}} if stop_lsn else {})}


def _info(*backups: dict) -> pitr.Info:
    return pitr.parse_info(json.dumps([{"name": "aixsss", "status": {"code": 0, "message": "ok"},
                                        "archive": [{"id": "15-1"}], "backup": list(backups)}]), "aixsss")


def test_a_base_backup_serves_a_timeline_only_on_its_history():
    """A backup taken on timeline 1 after timeline 2 left it (a full backup, then a restore to an instant before it)
    is not chosen for a T on timeline 2: the newest backup on timeline 2's history is; none is refused (exit 2)."""
    h = pitr.parse_history("1\t0/5000000\tbefore 2026-12-06 10:30:00.000001+00\n")
    assert h == {1: 0x5000000}
    first = _backup("F1", "000000010000000000000003", "0/3000100", NOW - timedelta(hours=2))
    after_fork = _backup("F2", "000000010000000000000007", "0/7000100", NOW - timedelta(hours=1))
    info = _info(first, after_fork)
    assert [b.timeline for b in info.backups] == [1, 1] and info.backups[1].lsn_stop == 0x7000100
    assert pitr.choose_backup(info, NOW, 2, h).label == "F1"
    assert pitr.choose_backup(info, NOW, None, {}).label == "F2"  # on timeline 1 itself the newest serves
    on_two = _backup("F3", "000000020000000000000009", "0/9000100", NOW - timedelta(minutes=30))
    assert pitr.choose_backup(_info(first, after_fork, on_two), NOW, 2, h).label == "F3"
    # no stop LSN: the stop segment's end bounds it (F2's segment 7 ends past the switch at 0/5000000)
    assert not pitr.usable(pitr.parse_info(json.dumps([{"name": "aixsss", "status": {"code": 0}, "backup": [
        _backup("F2", "000000010000000000000007", None, NOW)]}]), "aixsss").backups[0], 2, h)
    with pytest.raises(UsageError, match="F2, was taken on timeline 1 and timeline 2 left timeline 1 at 0/5000000"):
        pitr.choose_backup(_info(after_fork), NOW, 2, h)


def _wal(*segments: tuple[str, datetime]) -> list[pitr.WalFile]:
    return [pitr.WalFile(f"{s}-aa.lz4", 10, t) for s, t in segments]


def test_missing_archived_wal_on_the_replay_path_is_a_gap_and_moves_the_window():
    t0 = NOW - timedelta(hours=1)
    seg = [(f"00000001000000000000000{n}", t0 + timedelta(minutes=n)) for n in (3, 4, 6, 7)]
    files = _wal(*seg)
    assert pitr.missing_wal(files, "000000010000000000000003", None, {}) == [
        ("000000010000000000000005", "000000010000000000000005")]
    # a T held by segment 4 (archived before 6) needs no WAL past it
    assert pitr.missing_wal(files, "000000010000000000000003", None, {}, until=t0 + timedelta(minutes=4)) == []
    assert pitr.missing_wal(files, "000000010000000000000003", None, {}, until=t0 + timedelta(minutes=5)) != []
    # across a switch: timeline 2 begins at segment 5 (its history), timeline 1's 5 and later are abandoned
    h = {1: 0x5000000 + 0x100}
    switched = _wal(seg[0], seg[1], ("000000010000000000000005", t0), ("000000020000000000000005", t0),
                    ("000000020000000000000006", t0))
    assert pitr.missing_wal(switched, "000000010000000000000003", 2, h) == []
    assert pitr.missing_wal([w for w in switched if w.segment != "000000020000000000000005"],
                            "000000010000000000000003", 2, h) == [
        ("000000020000000000000005", "000000020000000000000005")]
    assert pitr.segno("000000010000000100000002") == 258
    assert pitr.segment_name(1, 258) == "000000010000000100000002"
    # the window starts again at the first base backup beginning after the gap
    info = _info(_backup("F1", "000000010000000000000003", "0/3000100", t0),
                 _backup("F2", "000000010000000000000006", "0/6000100", t0 + timedelta(minutes=6)))
    win = pitr.window(info, NOW, "000000010000000000000005")
    assert win.start == t0 + timedelta(minutes=6) and win.gap == "000000010000000000000005"
    assert "000000010000000000000005 is missing" in win.text()
    empty = pitr.window(info, NOW, "000000010000000000000009")
    assert empty.start is None and "no base backup ends after it" in empty.text()


def test_a_timeline_begins_when_the_cluster_before_it_stopped_not_when_its_history_was_archived():
    ls = {"0000000100000000/000000010000000000000007-aa.lz4": {"type": "file", "size": 1,
                                                               "time": _epoch(NOW - timedelta(seconds=3))},
          "00000002.history": {"type": "file", "size": 42, "time": _epoch(NOW)},
          "0000000200000000/000000020000000000000007-bb.lz4": {"type": "file", "size": 1,
                                                               "time": _epoch(NOW + timedelta(seconds=9))}}
    _files, timelines = pitr.parse_repo_ls(json.dumps(ls))
    assert timelines == {2: NOW - timedelta(seconds=3)}
    assert pitr.timeline_at(timelines, NOW - timedelta(seconds=1)) == 2  # promoted, history not yet archived


def test_the_plan_waits_for_the_live_timelines_history_file(monkeypatch):
    """The live cluster is on timeline 2 whose history file is not yet archived: the listing is read again until it
    is (a T just after the promotion is then on timeline 2); never archived: an error naming it."""
    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr_plan as planning

    class Eng:
        def __init__(self, listings):
            self.listings = listings

        def wal_files(self, _archive_id):
            return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]

    info = pitr.parse_info(json.dumps(INFO), "aixsss")
    eng = Eng([_listing(), _listing(), _listing(NOW)])
    _files, timelines = planning._archive_of(eng, info, 2)
    assert 2 in timelines and len(eng.listings) == 1
    monkeypatch.setattr(planning, "HISTORY_WAIT_S", 0.3)
    with pytest.raises(OpsError, match=r"live timeline 2 \(00000002.history\) is not in the archive"):
        planning._archive_of(Eng([_listing()]), info, 2)
    assert planning._archive_of(Eng([_listing()]), info, 1)[1] == {}


def test_a_live_database_that_does_not_answer_or_fails_archiving_is_named_first(monkeypatch):
    """Before the window is read (and before anything changes): a live database that does not answer, and WAL
    archiving failing now (the archiver's last failure newer than its last success), are each one error (exit 3)."""
    import contextlib
    from types import SimpleNamespace

    from aixsss_ops.backup import postgres
    from aixsss_ops.errors import CheckFailed, OpsError
    from aixsss_ops.usecases import pitr_plan as planning

    class Down:
        def connect(self, timeout=None):
            raise OpsError("connection refused\nis the server running?")

    class Conn:
        def __init__(self, archiver):
            self.rows = iter([(2,), archiver])

        def execute(self, *_a):
            return SimpleNamespace(fetchone=lambda: next(self.rows))

    def info():
        raise AssertionError("the window was read first")

    eng = SimpleNamespace(info=info)
    monkeypatch.setattr(planning, "database", lambda _dep: None)
    monkeypatch.setattr(postgres, "admin_target", lambda _db: Down())
    with pytest.raises(CheckFailed, match=r"^the live database does not answer \(connection refused\)") as e:
        planning.start(SimpleNamespace(), "-1m", eng, NOW)
    assert "stack up" in e.value.hint and e.value.exit_code == 3
    failing = ("00000001000000000000000A", NOW - timedelta(seconds=2), NOW - timedelta(minutes=5))
    monkeypatch.setattr(postgres, "admin_target", lambda _db: SimpleNamespace(
        connect=lambda timeout=None: contextlib.nullcontext(Conn(failing))))
    with pytest.raises(CheckFailed, match="WAL archiving fails now: the archiver last failed at .* on "
                                          "00000001000000000000000A"):
        planning.start(SimpleNamespace(), "-1m", eng, NOW)
    monkeypatch.setattr(postgres, "admin_target", lambda _db: SimpleNamespace(
        connect=lambda timeout=None: contextlib.nullcontext(Conn(None))))
    assert planning.live(SimpleNamespace()) == 2


def test_a_restore_that_fails_after_the_app_was_stopped_starts_it_again(tmp_path: Path, monkeypatch):
    """The checks passed, so the app was stopped beside the restore; then pgBackRest fails: the partial folder and
    the journal go, the live folder is untouched, and the app units are started again and waited for."""
    from types import SimpleNamespace

    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr_restore as uc

    data, _site, eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 4)
    runtime = _AppRuntime()
    ready = []
    stack = SimpleNamespace(runtime=runtime, engine_problem=lambda: None, wait_ready=lambda defs, _s: ready.append(
        sorted(d.service for d in defs)),
        app_defs=lambda c: [SimpleNamespace(service=s, color=c) for s in ("api", "worker")])
    monkeypatch.setattr(uc, "_stack", lambda _dep: stack)
    journal = data.parent / "pitr-restore.json"
    stopped_during = []

    def failing_restore(into, label, target, timeline, abort=None):
        import time

        deadline = time.monotonic() + 5
        while runtime.states[("worker", "blue")] != "STOPPED" and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_during.append(json.loads(journal.read_text())["stopped"])
        raise OpsError("pgbackrest restore failed (exit 41)")

    eng.restore = failing_restore
    with pytest.raises(OpsError, match="exit 41"):
        uc.restore_to_time(_dep(data), "-30m")
    assert stopped_during == [[["api", "blue"], ["worker", "blue"]]]  # stopped (and recorded) beside the restore
    assert runtime.log == [("stop", "api"), ("stop", "worker"), ("start", "api"), ("start", "worker")]
    assert ready == [["api", "worker"]]
    assert (data / "live").exists() and not journal.exists()
    assert not list(data.parent.glob("data.pitr-*"))


def test_a_store_that_does_not_answer_refuses_the_restore_before_anything(tmp_path: Path, monkeypatch):
    """With the objects asked for, a store that does not answer stops pgBackRest before the app or the live cluster
    is touched (exit 3, naming --db-only); --dry-run shows it as a warning; --db-only restores without it."""
    from aixsss_ops.backup import objects
    from aixsss_ops.errors import CheckFailed, OpsError
    from aixsss_ops.usecases import pitr_plan as planning
    from aixsss_ops.usecases import pitr_restore as uc

    real_objects_at = planning.objects_at
    data, _site, _eng = _restore_env(tmp_path, monkeypatch, [_listing()] * 6)
    runtime = _AppRuntime()
    monkeypatch.setattr(uc, "_stack", lambda _dep: __import__("types").SimpleNamespace(
        runtime=runtime, engine_problem=lambda: None, app_defs=lambda _c: [], wait_ready=lambda _d, _s: None))
    monkeypatch.setattr(planning, "objects_at", real_objects_at)  # the store's answer below, not _restore_env's

    def refused(*_a, **_k):
        raise OpsError("object store unreachable: connection refused")

    monkeypatch.setattr(objects, "rewind_plan", refused)
    dep = _dep(data)
    dep.bucket = "app"
    with pytest.raises(CheckFailed) as e:
        uc.restore_to_time(dep, "-30m")
    assert e.value.message.startswith("the object store does not answer (object store unreachable")
    assert "--db-only" in e.value.hint and "--objects-only" in e.value.hint
    assert runtime.log == [] and (data / "live").exists() and not (data.parent / "pitr-restore.json").exists()
    plan = uc.restore_to_time(dep, "-30m", dry_run=True)["plan"]
    assert any("the restore would be refused" in w for w in plan["warnings"]), plan["warnings"]
    res = uc.restore_to_time(dep, "-30m", with_objects=False)
    assert res["objects"] is None and (data / "restored_on").exists()
