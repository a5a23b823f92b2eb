"""``external = true`` for postgres/redis/s3: where their settings come from, what the engines leave out."""

from __future__ import annotations

import pytest

from aixsss_ops.compose.render import render_files
from aixsss_ops.config import OpsConfig
from aixsss_ops.context.envgen import external_settings, render_env_files
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import UsageError
from aixsss_ops.runtime import docker_specs, swarm_specs

URL = "postgresql://app:s3cret@db.example.com:5432/aixsss?schema=public"


def cfg_with(*external: str, **extra) -> OpsConfig:
    return OpsConfig(**{name: {"external": True} for name in external}, **extra)


def test_an_external_service_is_named_by_the_environment_first_then_by_the_env_files_kept():
    cfg = cfg_with("postgres", "s3")
    old = {"api": {"DATABASE_URL": "postgresql://old@db/x", "S3_ENDPOINT": "https://old", "S3_ACCESS_KEY": "a",
                   "S3_SECRET_KEY": "b"}}
    got = external_settings(cfg, old, {"DATABASE_URL": URL})
    assert got["DATABASE_URL"] == URL and got["S3_ENDPOINT"] == "https://old"
    assert "REDIS_URL" not in got  # redis is embedded: its URL follows ops.toml
    assert external_settings(cfg_with(), old, {"DATABASE_URL": URL}) == {}


def test_a_required_setting_found_nowhere_is_one_error_naming_each():
    with pytest.raises(UsageError) as e:
        external_settings(cfg_with("postgres", "s3"), {}, {"S3_ENDPOINT": "https://s3"})
    msg = e.value.message
    assert "DATABASE_URL (postgres.external)" in msg and "S3_SECRET_KEY (s3.external)" in msg
    assert "S3_ENDPOINT" not in msg and "S3_BUCKET" not in msg  # given; and the bucket has ops.toml's default


def test_the_env_files_carry_the_external_url_and_ops_toml_for_the_rest(tmp_path):
    cfg = cfg_with("postgres")
    envs = render_env_files(cfg, Layout(tmp_path), {}, {"DATABASE_URL": URL})
    assert envs["api"]["DATABASE_URL"] == URL == envs["worker"]["DATABASE_URL"]
    assert envs["api"]["REDIS_URL"].endswith(f"127.0.0.1:{cfg.ports.redis}")


def test_pitr_is_refused_with_an_external_postgres():
    with pytest.raises(ValueError, match="postgres.external"):
        cfg_with("postgres", backup={"pitr": True})
    with pytest.raises(ValueError, match="s3_endpoint"):
        cfg_with("s3", backup={"pitr": True, "destination": "s3", "s3_bucket": "wal"})


def test_the_container_engines_leave_the_external_services_out_and_their_urls_as_written():
    cfg = cfg_with("postgres", "redis")
    assert [s.service for s in docker_specs.infra(cfg)] == ["s3", "proxy"]
    assert [s.service for s in swarm_specs.infra(cfg)] == ["s3", "proxy"]
    api = docker_specs.app_process(cfg, "api", "blue", "r1", "1.0.0", "img")
    assert "--url-host" not in api.command  # DATABASE_URL and REDIS_URL used as the env file has them
    assert "S3_ENDPOINT=http://s3:8333" in " ".join(api.command)
    cfg = cfg_with("s3")
    api = docker_specs.app_process(cfg, "api", "blue", "r1", "1.0.0", "img")
    assert "DATABASE_URL=postgres:5432" in api.command and "S3_ENDPOINT" not in " ".join(api.command)
    infra = render_files(cfg)["infra.yml"]
    assert "weed" not in infra and "postgres:" in infra


@pytest.mark.parametrize("service,names", [("postgres", "DATABASE_URL"), ("redis", "REDIS_URL"), ("s3", "S3_ENDPOINT")])
def test_doctor_sends_a_managed_service_that_does_not_answer_to_what_names_it_not_to_a_start(service, names):
    from types import SimpleNamespace

    from aixsss_ops.doctor.checks import STACK_UP, bring_up

    managed = bring_up(SimpleNamespace(cfg=cfg_with(service)), service)
    assert names in managed and "managed service" in managed and not managed.startswith("start it")
    assert bring_up(SimpleNamespace(cfg=cfg_with()), service) == STACK_UP
