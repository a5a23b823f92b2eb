"""Point-in-time recovery (backup.pitr) on a whole embedded stack: real PostgreSQL archiving WAL through real
pgBackRest into a local repository, real SeaweedFS versions, through the CLI.

Rows and objects are written at T1, more at T2, deleted and overwritten at T3; ``restore --to-time`` T1 and then
T2 (an instant the first restore's new timeline must not hide) give exactly the data of that instant.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aixsss_ops.backup.pitr_sites import _restoring_into
from aixsss_ops.config import load_config
from aixsss_ops.context.deployment import Deployment
from tests.cli import EXE, REPO, run_cli
from tests.conftest import poll, stack_config, state_tmpdir
from tests.integration.backup_helpers import instant, objects_state, pitr_history, put, table_dump

pytestmark = pytest.mark.slow
DB = "pitrtest"


class Stack:
    def __init__(self, root: Path):
        self.root = root
        self.cfg_path = stack_config(root, backup={"dir": str(root / "backups"), "pitr": True, "rpo_seconds": 5},
                                     deploy={"backup": False})
        self.cfg = load_config(self.cfg_path)
        self.dep = Deployment(self.cfg)
        self.admin = self.dep.embedded_admin_url()
        self.url = self.dep.embedded_admin_url(DB)
        self.bucket = self.dep.bucket
        self.client = self.dep.s3.client()

    def cli(self, *args, **kw):
        return run_cli(*args, config=self.cfg_path, **kw)

    def state(self) -> tuple[dict, dict]:
        return table_dump(self.url), objects_state(self.client, self.bucket)

    def pg(self, database: str = DB):
        return psycopg.connect(self.dep.embedded_admin_url(database).split("?")[0], autocommit=True)

    def postmaster_pid(self) -> int:
        return int((self.cfg.state / "postgres" / "data" / "postmaster.pid").read_text().split()[0])


@pytest.fixture(scope="module")
def stack():
    s = Stack(state_tmpdir("aixsss-pitr-"))
    r = s.cli("stack", "up", timeout=240)
    assert r.code == 0, r.output
    try:
        yield s
    finally:
        r = s.cli("stack", "down", timeout=180)
        if r.code == 0:  # the repository and the kept data folders are the bulk of it
            shutil.rmtree(s.root, ignore_errors=True)


@pytest.fixture(scope="module")
def history(stack):
    """A base backup, then T1, T2, T3 with their exact data."""
    return pitr_history(stack, DB)


def _restore(stack, t: datetime, *extra):
    r = stack.cli("--json", "--yes", "restore", "--to-time", t.isoformat(), *extra, timeout=600)
    assert r.code == 0, r.output
    return r.json


def test_dry_run_names_the_base_backup_the_wal_and_the_objects(stack, history):
    plan = _restore(stack, history["t1"], "--dry-run")["plan"]
    assert plan["base_backup"]["label"] == history["base"]["backup"]["label"]
    assert plan["wal_segments_at_most"] >= 1 and plan["wal_bytes_at_most"] > 0
    o = plan["objects"]
    # at T1: img-0 and img-1 come back (copies of their T1 versions), t2.bin is hidden
    assert (o["copy"], o["delete_marker"]) == (2, 1), o
    assert stack.state() == history["s3"]  # nothing changed


def test_restore_to_t1_then_t2_gives_exactly_the_data_of_each_instant(stack, history):
    kept_before = set((stack.cfg.state / "postgres").glob("data.pre_pitr_*"))
    res = _restore(stack, history["t1"])
    rp = datetime.fromisoformat(res["recovery_point"].replace("Z", "+00:00"))
    assert rp <= history["t1"] and history["t1"] - rp < timedelta(seconds=5), res
    assert stack.state() == history["s1"]
    kept = Path(res["kept_data_dir"])
    assert kept.is_dir() and kept not in kept_before  # the old data folder stays until the operator drops it
    def api_blue() -> dict:
        return {u["unit"]: u for u in stack.cli("--json", "stack", "status").json["services"]}["api-blue"]

    api = api_blue()
    assert api["healthy"] and api["state"] in ("RUNNING", "STARTING"), api  # ready; the engine's start check may run on
    poll(lambda: api_blue()["state"] == "RUNNING", timeout=10, interval=0.2, what="api-blue RUNNING")

    res2 = _restore(stack, history["t2"])  # on the first timeline: after T1's restore began a new one
    rp2 = datetime.fromisoformat(res2["recovery_point"].replace("Z", "+00:00"))
    assert history["t1"] < rp2 <= history["t2"]
    assert stack.state() == history["s2"]


def test_objects_written_while_the_database_is_restored_are_rewound_too(stack, history):
    """The app serves until it is stopped for the swap, so it can write objects while pgBackRest restores the
    database: what it wrote after the plan was made is rewound too (an object made then is hidden, one
    overwritten then is back at its version of T)."""
    put(stack.client, stack.bucket, "assets/late/kept.bin", b"as it was at T")
    t = instant()
    at_t = objects_state(stack.client, stack.bucket)
    pgdir = stack.cfg.state / "postgres"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    p = subprocess.Popen([EXE, "--config", str(stack.cfg_path), "--yes", "restore", "--to-time", t.isoformat()],
                         cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    poll(lambda: any(pgdir.glob("data.pitr-*.partial/*")), timeout=60, interval=0.01, what="the restore's folder")
    put(stack.client, stack.bucket, "assets/late/made-during.bin", b"written while the database was restored")
    put(stack.client, stack.bucket, "assets/late/kept.bin", b"overwritten while the database was restored")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert objects_state(stack.client, stack.bucket) == at_t


def test_a_time_before_the_oldest_base_backup_is_refused_with_the_window(stack, history):
    started = datetime.fromisoformat(history["base"]["backup"]["started_at"].replace("Z", "+00:00"))
    r = stack.cli("--yes", "restore", "--to-time", (started - timedelta(minutes=5)).isoformat())
    assert r.code == 2, r.output
    assert "outside the point-in-time recovery window" in r.output and history["base"]["backup"]["stopped_at"][:19] \
        in r.output
    r = stack.cli("--yes", "restore", "--to-time", "2026-01-01T00:00:00")  # no zone
    assert r.code == 2 and "no time zone" in r.output


def test_list_shows_the_window_and_doctor_checks_archiving(stack, history):
    r = stack.cli("--json", "backup", "list")
    assert r.code == 0, r.output
    p = r.json["pitr"]
    assert p["window"]["from"] == history["base"]["backup"]["stopped_at"] and p["wal_segments"] > 0
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--only", "backup.pitr-wal", "--only",
                  "backup.pitr-base", "--timeout", "20")
    found = {f["check"]: f["status"] for f in r.json["findings"]}
    assert found == {"backup.pitr-archiving": "ok", "backup.pitr-wal": "ok", "backup.pitr-base": "ok"}, r.output


def test_wal_archiving_survives_a_postgres_crash_without_a_gap(stack, history):
    with stack.pg() as c:
        c.execute("CREATE TABLE crash (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        c.execute("INSERT INTO crash (id) SELECT generate_series(1, 1000)")
    os.kill(stack.postmaster_pid(), signal.SIGKILL)  # supervisord restarts it; crash recovery replays its WAL

    def answers():
        try:
            with stack.pg() as c:
                return c.execute("SELECT count(*) FROM crash").fetchone()[0] == 1000
        except psycopg.Error:
            return False

    poll(answers, timeout=60, interval=0.3, what="postgres back after kill -9")
    with stack.pg() as c:
        c.execute("INSERT INTO crash (id) SELECT generate_series(1001, 1500)")
    t = instant()
    _restore(stack, t)  # replay across the crash: a missing segment would stop it short of t
    with stack.pg() as c:
        assert c.execute("SELECT count(*), max(id) FROM crash").fetchone() == (1500, 1500)


def test_a_sigkilled_restore_leaves_the_live_cluster_usable_and_a_rerun_finishes(stack, history):
    with stack.pg() as c:
        c.execute("CREATE TABLE IF NOT EXISTS killed (id int)")
        c.execute("INSERT INTO killed VALUES (1)")
    t = instant()
    with stack.pg() as c:
        c.execute("INSERT INTO killed VALUES (2)")
    pgdir = stack.cfg.state / "postgres"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    p = subprocess.Popen([EXE, "--config", str(stack.cfg_path), "--yes", "restore", "--to-time", t.isoformat()],
                         cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    poll(lambda: any(pgdir.glob("data.pitr-*.partial/*")), timeout=60, interval=0.02, what="the restore's folder")
    partial = next(pgdir.glob("data.pitr-*.partial"))
    assert _restoring_into(partial)  # pgBackRest is writing into it
    p.kill()
    p.wait(30)
    # the whole pgBackRest process group dies with the command: none of its workers writes on into the folder
    poll(lambda: not _restoring_into(partial), timeout=3, interval=0.05, what="pgBackRest's processes to end")
    with stack.pg() as c:  # the live cluster was never stopped
        assert c.execute("SELECT count(*) FROM killed").fetchone()[0] == 2
    journal = json.loads((pgdir / "pitr-restore.json").read_text())
    assert Path(journal["new"]).exists()

    def doctor() -> dict:
        r = stack.cli("--json", "doctor", "--only", "backup.pitr-restore")
        return next(f for f in r.json["findings"] if f["check"] == "backup.pitr-restore")

    found = doctor()  # a failure once the restore had stopped the app (its checks passed before the kill)
    assert found["status"] == ("fail" if journal["stopped"] else "warn") and journal["new"] in found["message"], found
    plan = _restore(stack, t, "--dry-run")["plan"]  # changes nothing, says what is pending
    assert Path(journal["new"]).exists() and any(journal["new"] in w for w in plan["warnings"]), plan
    _restore(stack, t)  # the rerun removes the partial folder first
    assert not list(pgdir.glob("data.pitr-*.partial"))
    assert doctor()["status"] == "ok"
    with stack.pg() as c:
        assert c.execute("SELECT count(*) FROM killed").fetchone()[0] == 1




def test_a_live_database_that_does_not_answer_is_named_before_anything_changes(stack, history):
    """Postgres stopped: the restore could not commit the transaction after T that replay needs. It is refused
    before the window is read and before anything changes (exit 3), naming the database, not the window."""
    from aixsss_ops.stack.engines import open_stack

    with stack.pg() as c:
        c.execute("CREATE TABLE IF NOT EXISTS unreachable (id int)")
        c.execute("INSERT INTO unreachable VALUES (1)")
    t = instant()
    pgdir = stack.cfg.state / "postgres"
    folders_before = sorted(p.name for p in pgdir.iterdir())
    runtime = open_stack(stack.dep).runtime
    runtime.stop("postgres")
    started = time.monotonic()
    try:
        for when in (t.isoformat(), "-1m"):
            r = stack.cli("--json", "--yes", "restore", "--to-time", when, "--db-only", timeout=600)
            assert r.code == 3, r.output
            assert r.json["error"].startswith("the live database does not answer"), r.json
            assert "outside" not in r.output and "stack up" in r.json["hint"], r.json
        assert time.monotonic() - started < 60
        assert sorted(p.name for p in pgdir.iterdir()) == folders_before  # nothing moved, no journal
    finally:
        runtime.start("postgres")
    poll(lambda: _answers(stack), timeout=60, interval=0.2, what="postgres started again")
    with stack.pg() as c:
        assert c.execute("SELECT count(*) FROM unreachable").fetchone()[0] == 1


def _answers(stack) -> bool:
    try:
        with stack.pg() as c:
            return c.execute("SELECT 1").fetchone()[0] == 1
    except psycopg.Error:
        return False


def test_objects_only_and_db_only_each_rewind_their_half_alone(stack, history):
    """--objects-only rewinds the bucket to T and leaves the database; --db-only restores the database to T and
    leaves the bucket (no listing of it at all)."""
    for bad, said in ((("--db-only", "--objects-only"), "exclude each other"),
                      (("--objects-only", "--jobs", "2"), "--jobs belong(s) to the restore of a backup ID")):
        r = stack.cli("--yes", "restore", "--to-time", "-1m", *bad)
        assert r.code == 2 and said in r.output, r.output
    with stack.pg() as c:
        c.execute("CREATE TABLE IF NOT EXISTS halves (id int)")
        c.execute("INSERT INTO halves VALUES (1)")
    put(stack.client, stack.bucket, "assets/halves/a.bin", b"a at T")
    t = instant()
    with stack.pg() as c:
        c.execute("INSERT INTO halves VALUES (2)")
    at_t = objects_state(stack.client, stack.bucket)
    put(stack.client, stack.bucket, "assets/halves/a.bin", b"a after T")
    put(stack.client, stack.bucket, "assets/halves/b.bin", b"b after T")
    db_now = table_dump(stack.url)

    plan = _restore(stack, t, "--objects-only", "--dry-run")["objects"]
    assert (plan["copy"], plan["delete_marker"]) == (1, 1), plan
    assert objects_state(stack.client, stack.bucket) != at_t
    res = _restore(stack, t, "--objects-only")
    assert (res["objects"]["copied"], res["objects"]["delete_markers"]) == (1, 1), res
    assert objects_state(stack.client, stack.bucket) == at_t and table_dump(stack.url) == db_now

    put(stack.client, stack.bucket, "assets/halves/c.bin", b"c after the object rewind")
    objects_now = objects_state(stack.client, stack.bucket)
    plan = _restore(stack, t, "--db-only", "--dry-run")["plan"]
    assert plan["objects"] is None
    res = _restore(stack, t, "--db-only")
    assert res["objects"] is None
    with stack.pg() as c:
        assert c.execute("SELECT array_agg(id ORDER BY id) FROM halves").fetchone()[0] == [1]
    assert objects_state(stack.client, stack.bucket) == objects_now


def test_a_repository_in_a_bucket_of_the_embedded_store_over_its_tls_port():
    """destination = "s3": pgBackRest 2.45 speaks only HTTPS to S3, so the embedded SeaweedFS serves TLS on a port of
    its own (a CA made in the state folder, trusted by pgBackRest) beside the plain one the app keeps; the
    repository is in backup.s3_bucket, beside the logical backups' prefix; a restore to T1 reads it back."""
    root = state_tmpdir("aixsss-pitr-s3-")
    cfg_path = stack_config(root, backup={"pitr": True, "rpo_seconds": 5, "destination": "s3",
                                          "s3_bucket": "pitr-repo", "s3_prefix": "backups"},
                            deploy={"backup": False})
    cfg = load_config(cfg_path)
    dep = Deployment(cfg)
    url = dep.embedded_admin_url("postgres")

    def cli(*args, **kw):
        return run_cli(*args, config=cfg_path, **kw)

    r = cli("stack", "up", timeout=240)
    assert r.code == 0, r.output
    try:
        conf = (cfg.state / "pgbackrest" / "pgbackrest.conf").read_text()
        tls = int(next(ln for ln in conf.splitlines() if ln.startswith("repo1-storage-port=")).split("=")[1])
        assert tls != cfg.ports.s3 and "repo1-type=s3" in conf and "repo1-s3-uri-style=path" in conf
        import ssl
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(cfg.state / "pgbackrest" / "s3-ca.pem"))
        try:  # HTTPS with the stack's CA (an anonymous request: refused, but over a verified TLS connection)
            urllib.request.urlopen(f"https://{cfg.host}:{tls}/", context=ctx, timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == 403
        r = cli("--json", "backup", "base", timeout=300)
        assert r.code == 0, r.output
        keys = [o.object_name for o in dep.s3.client().list_objects("pitr-repo", prefix="backups.pgbackrest/",
                                                                   recursive=True)]
        assert any("/backup.info" in k for k in keys) and any("/archive/" in k for k in keys), keys
        with psycopg.connect(url.split("?")[0], autocommit=True) as c:
            c.execute("CREATE TABLE s3pitr (id int)")
            c.execute("INSERT INTO s3pitr SELECT generate_series(1, 100)")
        t1 = instant()
        with psycopg.connect(url.split("?")[0], autocommit=True) as c:
            c.execute("INSERT INTO s3pitr SELECT generate_series(101, 200)")
        r = cli("--json", "--yes", "restore", "--to-time", t1.isoformat(), timeout=600)
        assert r.code == 0, r.output
        with psycopg.connect(url.split("?")[0], autocommit=True) as c:
            assert c.execute("SELECT count(*), max(id) FROM s3pitr").fetchone() == (100, 100)
        r = cli("--json", "doctor", "--only", "backup.pitr-archiving", "--timeout", "30")
        assert {f["check"]: f["status"] for f in r.json["findings"]} == {"backup.pitr-archiving": "ok"}, r.output

        # a certificate within 30 days of its end: `stack up` makes a new one (and a new CA) and the running store
        # serves it from then on, so pgBackRest, which trusts only the new CA, still reaches the repository
        cert_file = cfg.state / "s3" / "tls" / "cert.pem"
        served_before = _served_cert(cfg.host, tls)
        assert served_before == _pem_der(cert_file.read_bytes())
        cert_file.write_bytes(_expiring_cert(cfg.host))
        r = cli("--json", "stack", "up", timeout=240)
        assert r.code == 0, r.output
        assert "stopped s3 (a new HTTPS certificate)" in r.json["actions"], r.json
        served = _served_cert(cfg.host, tls)
        assert served == _pem_der(cert_file.read_bytes()) and served != served_before
        r = cli("--json", "doctor", "--only", "backup.pitr-archiving", "--timeout", "30")
        assert {f["check"]: f["status"] for f in r.json["findings"]} == {"backup.pitr-archiving": "ok"}, r.output
        r = cli("--json", "stack", "up", timeout=240)  # nothing renewed: the store keeps running
        assert r.code == 0 and not any("s3" in a for a in r.json["actions"]), r.json
    finally:
        r = cli("stack", "down", timeout=180)
        if r.code == 0:
            shutil.rmtree(root, ignore_errors=True)


def _served_cert(host: str, port: int) -> bytes:
    """The DER of the certificate the store's HTTPS port presents (not verified: only compared)."""
    import ssl

    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, port), timeout=10))


def _pem_der(pem: bytes) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(pem.decode())


def _expiring_cert(host: str) -> bytes:
    """A self-signed certificate for ``host`` that ends in 10 days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=800))
            .not_valid_after(now + timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)
