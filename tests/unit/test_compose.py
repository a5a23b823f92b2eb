"""compose/*.yml are rendered from ops.toml by the docker runtime's own specs and must stay in sync."""

from __future__ import annotations

from pathlib import Path

import yaml

from aixsss_ops.compose.render import render_files
from aixsss_ops.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("AIXSSS_OPS_"):
            monkeypatch.delenv(k)
    return load_config(REPO / "ops.toml")


def test_committed_compose_files_are_in_sync_with_the_renderer(monkeypatch):
    files = render_files(_cfg(monkeypatch))
    assert sorted(files) == ["app.yml", "infra.yml", "proxy.yml"]
    for name, text in files.items():
        assert (REPO / "compose" / name).read_text() == text, f"compose/{name} is stale: run 'aixsss-ops compose render'"


def test_compose_files_hold_no_secret_and_escape_dollars(monkeypatch):
    cfg = _cfg(monkeypatch)
    files = render_files(cfg)
    for text in files.values():
        assert cfg.s3.secret_key.get_secret_value() not in text
    infra = yaml.safe_load(files["infra.yml"])
    pg = infra["services"]["postgres"]
    assert "POSTGRES_PASSWORD" not in pg["environment"]  # a secret is a file, never container environment
    assert pg["secrets"] == [{"source": "postgres_superuser_password", "target": "postgres_password"}]
    assert "--pwfile=/run/secrets/postgres_password" in pg["command"][2]
    assert pg["init"] is True  # what `exec` leaves behind is reaped by the engine's init, not by Postgres
    assert "init" not in infra["services"]["redis"]
    assert infra["secrets"] == {"postgres_superuser_password": {"environment": "POSTGRES_SUPERUSER_PASSWORD"},
                                "redis_password": {"environment": "REDIS_PASSWORD"},
                                "s3_access_key": {"environment": "S3_ACCESS_KEY"},
                                "s3_secret_key": {"environment": "S3_SECRET_KEY"}}
    assert "environment" not in infra["services"]["s3"]
    redis = infra["services"]["redis"]  # the password: a secret file fed to redis-server on stdin, in no argv
    assert redis["secrets"] == [{"source": "redis_password", "target": "redis_password"}]
    assert "redis-server -" in redis["command"][2] and "requirepass $$(cat /run/secrets/redis_password)" in \
        redis["command"][2]
    assert '"$$PGDATA/PG_VERSION"' in pg["command"][2]
    assert set(infra["volumes"]) == {"pgdata", "redis", "s3", "run"}
    proxy = yaml.safe_load(files["proxy.yml"])["services"]["proxy"]
    assert "$$host" in proxy["environment"]["NGINX_CONF"] and "$host" not in proxy["environment"]["NGINX_CONF"].replace(
        "$$", "")
    app = yaml.safe_load(files["app.yml"])
    api = app["services"]["api"]
    assert "APP_COLOR=${COLOR:?}" in api["command"] and "API_SOCKET=/run/aixsss/sock/api-${COLOR:?}.sock" in api["command"]
    assert api["command"][:5] == ["python3", "-m", "aixsss_ops.runtime.envexec", "--env-file", "/run/secrets/api.env"]
    assert api["user"] == "10001:10001" and "env_file" not in api
    assert api["secrets"] == [{"source": "api_env", "target": "api.env", "uid": "10001", "gid": "10001", "mode": 0o400}]
    assert app["secrets"]["api_env"]["file"].endswith("env/api.env")
    assert app["secrets"]["worker_env"]["file"].endswith("env/worker.env")
    assert "environment" not in api  # the process's env goes through envexec, after its env file
    assert "PYTHONUNBUFFERED=1" in api["command"] and api["working_dir"] == "/srv/app"
    assert app["services"]["api"]["ports"] == [f"{cfg.host}:${{API_PORT:?}}:3001"]
    assert app["services"]["api"]["image"] == f"{cfg.docker.app_image}:${{RELEASE:?}}"


def test_a_described_node_app_renders_from_its_process_table(tmp_path, monkeypatch):
    """The Node fixture's description: one service per process, its cwd, its port variable, no api socket; the
    proxy reaches the TCP-only api by its container's name through the engine's resolver."""
    from tests.conftest import node_app_toml, stack_config

    monkeypatch.delenv("AIXSSS_OPS_CONFIG", raising=False)
    cfg = load_config(stack_config(tmp_path, app_toml=node_app_toml(tmp_path / "src")))
    files = render_files(cfg, tmp_path / "compose")
    app = yaml.safe_load(files["app.yml"])["services"]
    assert set(app) == {"api", "worker"}
    api, worker = app["api"], app["worker"]
    assert api["working_dir"] == "/srv/app/apps/api" and worker["working_dir"] == "/srv/app/apps/worker"
    assert api["command"][-3:] == ["--", "node", "dist/main.js"] and "PORT=3001" in api["command"]
    assert not any(a.startswith("API_SOCKET=") for a in api["command"]) and "volumes" not in api
    assert api["stop_grace_period"] == "10s" and worker["stop_grace_period"] == "30s"
    assert api["healthcheck"]["test"][-1].endswith("http://127.0.0.1:3001/api/health', timeout=3)")
    assert "healthcheck" not in worker and "ports" not in worker
    conf = yaml.safe_load(files["proxy.yml"])["services"]["proxy"]["environment"]["NGINX_CONF"]
    assert "resolver 127.0.0.11" in conf and "http://api-blue:3001" in conf and "http://api-green:3001" in conf
    assert 'listen "unix:/run/aixsss/proxy-blue.sock"' in conf


def test_a_role_of_count_two_is_two_services(tmp_path, monkeypatch):
    from tests.conftest import node_app_toml, stack_config

    monkeypatch.delenv("AIXSSS_OPS_CONFIG", raising=False)
    toml = node_app_toml(tmp_path / "src").replace('cwd = "apps/worker"\n', 'cwd = "apps/worker"\ncount = 2\n')
    cfg = load_config(stack_config(tmp_path, app_toml=toml))
    app = yaml.safe_load(render_files(cfg, tmp_path / "compose")["app.yml"])["services"]
    assert set(app) == {"api", "worker", "worker.2"}
    assert app["worker.2"]["command"] == app["worker"]["command"]
    assert app["worker.2"]["working_dir"] == "/srv/app/apps/worker"
    assert app["worker.2"]["container_name"].endswith("-worker.2-${COLOR:?}")
    assert app["worker.2"]["secrets"] == app["worker"]["secrets"]  # the worker role's env file
