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
    assert pg["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_SUPERUSER_PASSWORD}"
    assert '"$$PGDATA/PG_VERSION"' in pg["command"][2]
    assert set(infra["volumes"]) == {"pgdata", "redis", "s3", "run"}
    proxy = yaml.safe_load(files["proxy.yml"])["services"]["proxy"]
    assert "$$host" in proxy["environment"]["NGINX_CONF"] and "$host" not in proxy["environment"]["NGINX_CONF"].replace(
        "$$", "")
    app = yaml.safe_load(files["app.yml"])
    assert app["services"]["api"]["environment"]["APP_COLOR"] == "${COLOR:?}"
    assert app["services"]["api"]["ports"] == [f"{cfg.host}:${{API_PORT:?}}:3001"]
    assert app["services"]["api"]["image"] == f"{cfg.docker.app_image}:${{RELEASE:?}}"
