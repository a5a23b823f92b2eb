"""Point-in-time recovery on the docker runtime with pgBackRest's repository in a bucket of the embedded store
(``backup.destination = "s3"``): real PostgreSQL and pgBackRest 2.45 in the Postgres container, real SeaweedFS
serving HTTPS in its container beside the plain port (a certificate for its network name ``s3``, signed by a CA
made in the state folder, which pgBackRest alone trusts), through the CLI.

The repository lands in the bucket and not in the volume; the store's keys reach the container only as a secret
file; a restore to T1 reads the base backup and the WAL back from the bucket and gives T1's rows.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime

import psycopg
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.runtime import docker_specs as specs
from tests.cli import run_cli
from tests.integration.docker.conftest import docker_config, purge
from tests.integration.docker.test_docker_stack import containers

BUCKET, PREFIX = "pitr-repo", "backups"


@pytest.fixture(scope="module")
def stack(docker_images):
    cfg_path, project = docker_config("aixsss-dpitr-s3-", backup={
        "pitr": True, "rpo_seconds": 5, "destination": "s3", "s3_bucket": BUCKET, "s3_prefix": PREFIX},
        deploy={"backup": False})
    try:
        r = run_cli("stack", "up", config=cfg_path, timeout=300)
        assert r.code == 0, r.output
        yield cfg_path, project
    finally:
        run_cli("stack", "down", config=cfg_path, timeout=240)
        purge(project)
        shutil.rmtree(cfg_path.parent, ignore_errors=True)


def _in_postgres(project: str, *argv: str) -> tuple[int, str]:
    r = containers(project)["postgres"].exec_run(list(argv), user="postgres")
    return r.exit_code, r.output.decode(errors="replace")


def test_the_repository_is_in_the_bucket_over_https_and_a_restore_reads_it_back(stack):
    cfg_path, project = stack
    cfg = load_config(cfg_path)
    dep = Deployment(cfg)
    url = dep.embedded_admin_url("postgres").split("?")[0]

    def cli(*args, **kw):
        return run_cli(*args, config=cfg_path, **kw)

    secret = cfg.s3.secret_key.get_secret_value()
    for name in ("postgres", "s3"):  # the keys are in no container's definition
        attrs = containers(project)[name].attrs
        assert secret not in json.dumps([attrs["Config"], attrs["HostConfig"]]), name
    code, out = _in_postgres(project, "stat", "-c", "%a %U", specs.PGBACKREST_CONF)
    assert (code, out.strip()) == (0, "600 postgres")
    code, out = _in_postgres(project, "cat", specs.PGBACKREST_CONF)
    conf = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert (conf["repo1-type"], conf["repo1-s3-endpoint"], conf["repo1-storage-port"]) == (
        "s3", "s3", str(specs.PORTS["s3_tls"]))

    r = cli("--json", "backup", "base", timeout=300)
    assert r.code == 0, r.output
    assert r.json["backup"]["type"] == "full" and not r.json["warnings"], r.output
    keys = [o.object_name for o in dep.s3.client().list_objects(BUCKET, prefix=f"{PREFIX}.pgbackrest/",
                                                               recursive=True)]
    assert any("/backup.info" in k for k in keys) and any("/archive/" in k for k in keys), keys
    code, out = _in_postgres(project, "sh", "-c", f"ls -A {specs.PGBACKREST}/repo 2>/dev/null | wc -l")
    assert (code, out.strip()) == (0, "0")  # nothing in the volume's repository folder

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE s3pitr (id int)")
        c.execute("INSERT INTO s3pitr SELECT generate_series(1, 100)")
    time.sleep(1.2)
    t1 = datetime.now(UTC)
    time.sleep(1.2)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO s3pitr SELECT generate_series(101, 200)")
    r = cli("--json", "--yes", "restore", "--to-time", t1.isoformat(), timeout=600)
    assert r.code == 0, r.output
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*), max(id) FROM s3pitr").fetchone() == (100, 100)

    r = cli("--json", "doctor", "--only", "backup.pitr-archiving", "--only", "backup.pitr-base", "--only",
            "backup.pitr-lifecycle", "--timeout", "30", timeout=120)
    found = {f["check"]: f["status"] for f in r.json["findings"]}
    assert found == {"backup.pitr-archiving": "ok", "backup.pitr-base": "ok", "backup.pitr-lifecycle": "ok"}, \
        r.output  # and no backup.pitr-space: a bucket has no file system to measure
