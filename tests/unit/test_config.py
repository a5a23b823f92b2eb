from pathlib import Path

import pytest

from tests.cli import run_cli


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ops.toml"
    p.write_text(text)
    return p


def test_malformed_toml_is_a_usage_error_naming_the_file(tmp_path):
    cfg = write(tmp_path, "[ports\npostgres = 1\n")
    r = run_cli("config", "show", config=cfg)
    assert r.code == 2
    assert str(cfg) in r.stderr and "malformed TOML" in r.stderr
    assert "Traceback" not in r.output


def test_unknown_key_names_the_field(tmp_path):
    cfg = write(tmp_path, "[ports]\npostgress = 5432\n")
    r = run_cli("config", "show", config=cfg)
    assert r.code == 2
    assert "ports.postgress: unknown key" in r.stderr


def test_wrong_type_names_the_field(tmp_path):
    cfg = write(tmp_path, '[ports]\nredis = "six"\n')
    r = run_cli("config", "show", config=cfg)
    assert r.code == 2
    assert "ports.redis" in r.stderr and "integer" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    "text, field",
    [
        ("[ports]\nproxy = 70000\n", "ports.proxy"),
        ('runtime = "kubernetes"\n', "runtime"),
        ("[app]\nworker_concurrency = 0\n", "app.worker_concurrency"),
    ],
)
def test_bad_values_name_the_field(tmp_path, text, field):
    r = run_cli("config", "show", config=write(tmp_path, text))
    assert r.code == 2
    assert f"{field}:" in r.stderr


def test_missing_explicit_config_is_a_usage_error(tmp_path):
    r = run_cli("config", "show", config=tmp_path / "nope.toml")
    assert r.code == 2 and "not found" in r.stderr


def test_environment_overrides_the_file(tmp_path):
    cfg = write(tmp_path, "[ports]\nproxy = 18001\n")
    r = run_cli("--json", "config", "show", config=cfg, env={"AIXSSS_OPS_PORTS__PROXY": "18123"})
    assert r.code == 0, r.stderr
    assert r.json["ports"]["proxy"] == 18123
    bad = run_cli("config", "show", config=cfg, env={"AIXSSS_OPS_PORTS__PROXY": "x"})
    assert bad.code == 2 and "ports.proxy" in bad.stderr


def test_secrets_are_masked_in_config_show(tmp_path):
    secret = "s3cr3t-Value-that-must-not-leak"
    cfg = write(tmp_path, f'[s3]\nsecret_key = "{secret}"\naccess_key = "AKIAEXAMPLEKEY00"\n')
    human = run_cli("config", "show", config=cfg)
    js = run_cli("--json", "config", "show", config=cfg)
    assert human.code == 0 and js.code == 0
    for r in (human, js):
        assert secret not in r.output
        assert "AKIAEXAMPLEKEY00" not in r.output
    assert js.json["s3"]["secret_key"] == "****"
    assert js.json["s3"]["bucket"] == "aixsss-assets"


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg = write(tmp_path, 'state_dir = "state"\n')
    r = run_cli("--json", "config", "show", config=cfg)
    assert r.json["state_dir"] == str(tmp_path / "state")


def test_version_and_help():
    r = run_cli("--version")
    assert r.code == 0 and r.stdout.startswith("aixsss-ops ")
    h = run_cli("--help")
    assert h.code == 0 and "stack" in h.stdout and "config" in h.stdout
