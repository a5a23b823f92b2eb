"""`aixsss-ops env init | validate | diff` through the real CLI: exit codes, JSON, files, and no secret in any output."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from aixsss_ops import envfile
from aixsss_ops.envcheck.sources import secret_values
from tests.cli import run_cli
from tests.conftest import stack_config, state_tmpdir


@pytest.fixture
def cfg():
    return stack_config(state_tmpdir("aixsss-envcli-"))


def env_dir(cfg: Path) -> Path:
    return cfg.parent / "state" / "env"


def read_envs(cfg: Path) -> dict[str, dict[str, str]]:
    return {s: envfile.read(env_dir(cfg) / f"{s}.env") for s in ("api", "worker", "web")}


def assert_clean(result, envs) -> None:
    """No secret value of any env file in stdout or stderr (JSON included)."""
    for s in secret_values(envs):
        assert s not in result.stdout and s not in result.stderr, "a secret leaked into the output"


def test_init_writes_consistent_private_files_then_validate_passes(cfg):
    r = run_cli("--json", "env", "init", config=cfg)
    assert r.code == 0, r.output
    envs = read_envs(cfg)
    assert_clean(r, envs)
    for s in ("api", "worker", "web"):
        assert (env_dir(cfg) / f"{s}.env").stat().st_mode & 0o777 == 0o600
    for var in ("API_KEY_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "AI_QUEUE_NAME"):
        assert envs["api"][var] == envs["worker"][var]
    assert len(envs["api"]["JWT_SECRET"]) >= 48
    assert r.json["key_fingerprint"] and r.json["kept"] == []

    v = run_cli("--json", "env", "validate", config=cfg)
    assert v.code == 0, v.output
    assert v.json["ok"] and v.json["errors"] == 0 and set(v.json["origins"]) == {"api", "worker", "web"}
    assert_clean(v, envs)
    human = run_cli("env", "validate", config=cfg)
    assert human.code == 0 and "0 error(s)" in human.stdout
    assert_clean(human, envs)


def test_init_refuses_to_overwrite_and_force_keeps_the_key(cfg):
    assert run_cli("env", "init", config=cfg).code == 0
    before = read_envs(cfg)
    again = run_cli("env", "init", config=cfg)
    assert again.code == 2 and "refusing to overwrite" in again.stderr
    assert read_envs(cfg) == before
    forced = run_cli("--json", "env", "init", "--force", config=cfg)
    assert forced.code == 0, forced.output
    after = read_envs(cfg)
    assert after["api"]["API_KEY_ENCRYPTION_KEY"] == before["api"]["API_KEY_ENCRYPTION_KEY"]
    assert after["api"]["JWT_SECRET"] != before["api"]["JWT_SECRET"]
    assert forced.json["kept"] == ["API_KEY_ENCRYPTION_KEY"]
    assert_clean(forced, {**before, **{f"{k}2": v for k, v in after.items()}})


def test_init_production_refuses_default_secrets_then_passes_the_production_rules(cfg):
    r = run_cli("env", "init", "--production", config=cfg)
    assert r.code == 3 and "S3_SECRET_KEY" in r.stderr and "nothing was written" in r.stderr
    assert "minio123456" not in r.output
    assert not (env_dir(cfg) / "api.env").exists()
    s3 = secrets.token_urlsafe(24)
    ok = run_cli("--json", "env", "init", "--production", "--cors-origin", "https://storyboard.example.com",
                 config=cfg, env={"AIXSSS_OPS_S3__SECRET_KEY": s3})
    assert ok.code == 0, ok.output
    envs = read_envs(cfg)
    assert envs["api"]["NODE_ENV"] == "production" and envs["api"]["CORS_ORIGIN"] == "https://storyboard.example.com"
    v = run_cli("--json", "env", "validate", "--strict", config=cfg)
    assert v.code == 0, v.output
    assert_clean(ok, envs)
    assert_clean(v, envs)


def test_validate_reports_each_problem_with_variable_rule_and_fix_exit_3(cfg):
    assert run_cli("env", "init", config=cfg).code == 0
    api = env_dir(cfg) / "api.env"
    env = envfile.read(api)
    env.update(NODE_ENV="production", CORS_ORIGIN="*", JWT_SECRET="jwt-secret-jwt-secret-jwt-secret-0123")
    envfile.write(api, env)
    worker = env_dir(cfg) / "worker.env"
    wenv = envfile.read(worker)
    wenv["AI_QUEUE_NAME"] = "other-queue"
    envfile.write(worker, wenv)
    r = run_cli("--json", "env", "validate", config=cfg)
    assert r.code == 3, r.output
    got = {(f["check"], f["variable"]) for f in r.json["findings"]}
    assert {("prod.cors", "CORS_ORIGIN"), ("prod.weak-secret", "JWT_SECRET"), ("env.shared", "AI_QUEUE_NAME")} <= got
    assert all(f["fix"] for f in r.json["findings"])
    assert "jwt-secret-jwt-secret" not in r.output
    assert_clean(r, read_envs(cfg))
    human = run_cli("env", "validate", "--service", "api", config=cfg)
    assert human.code == 3
    assert "CORS_ORIGIN: [prod.cors]" in human.stdout and "fix:" in human.stdout
    assert_clean(human, read_envs(cfg))


def test_warnings_exit_0_unless_strict(cfg, tmp_path):
    assert run_cli("env", "init", config=cfg).code == 0
    api = envfile.read(env_dir(cfg) / "api.env")
    api["REDIS_URL"] = "redis://localhost:6379"
    f = tmp_path / "api.env"
    envfile.write(f, api)
    r = run_cli("--json", "env", "validate", "--service", "api", "--env-file", str(f), config=cfg)
    assert r.code == 0 and r.json["warnings"] == 1 and r.json["findings"][0]["check"] == "env.localhost"
    strict = run_cli("env", "validate", "--service", "api", "--env-file", str(f), "--strict", config=cfg)
    assert strict.code == 3


def test_malformed_env_file_names_the_line_and_variable(cfg, tmp_path):
    f = tmp_path / "worker.env"
    secret = secrets.token_urlsafe(32)
    f.write_text(f"NODE_ENV=development\n# comment\nAPI_KEY_ENCRYPTION_KEY {secret}\n")
    r = run_cli("--json", "env", "validate", "--env-file", f"worker={f}", "--service", "worker", config=cfg)
    assert r.code == 3
    [finding] = r.json["findings"]
    assert f"{f}:3" in finding["message"] and finding["variable"] == "API_KEY_ENCRYPTION_KEY"
    assert secret not in r.output


def test_process_environment_alone(cfg):
    key = secrets.token_urlsafe(40)
    environ = {"DATABASE_URL": "postgresql://u:pw-abcdef@127.0.0.1:5432/aixsss", "API_KEY_ENCRYPTION_KEY": key,
               "NODE_ENV": "development"}
    r = run_cli("--json", "env", "validate", "--service", "worker", "--environ", config=cfg, env=environ)
    assert r.code == 0, r.output
    assert r.json["origins"] == {"worker": "the process environment"}
    assert key not in r.output and "pw-abcdef" not in r.output
    missing = run_cli("--json", "env", "validate", "--service", "worker", config=cfg)
    assert missing.code == 3 and missing.json["findings"][0]["check"] == "env.file"


def test_diff_between_services_and_files_masks_values(cfg, tmp_path):
    assert run_cli("env", "init", config=cfg).code == 0
    envs = read_envs(cfg)
    r = run_cli("--json", "env", "diff", "api", "worker", config=cfg)
    assert r.code == 0, r.output
    rows = {d["variable"]: d for d in r.json["differences"]}
    assert rows["JWT_SECRET"]["change"] == "only in A" and rows["JWT_SECRET"]["a"].startswith("****")
    assert rows["WORKER_CONCURRENCY"]["change"] == "only in B"
    assert "API_KEY_ENCRYPTION_KEY" not in rows and "DATABASE_URL" not in rows
    assert_clean(r, envs)
    other = dict(envs["api"])
    other["DATABASE_URL"] = other["DATABASE_URL"].replace(other["DATABASE_URL"].split(":")[2].split("@")[0], "x" * 20)
    f = tmp_path / "other.env"
    envfile.write(f, other)
    d = run_cli("env", "diff", "api", str(f), config=cfg, env={"COLUMNS": "200"})
    assert d.code == 0 and "the passwords differ" in d.stdout
    assert_clean(d, envs)
    assert "x" * 20 not in d.output
    same = run_cli("--json", "env", "diff", "api", "api", config=cfg)
    assert same.json["same"] is True
    json.loads(same.stdout)
