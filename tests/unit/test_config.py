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


def test_a_non_utf8_file_is_a_config_error_naming_the_file(tmp_path):
    p = tmp_path / "ops.toml"
    p.write_bytes(b'project = "caf\xe9"\n')
    r = run_cli("config", "show", config=p)
    assert r.code == 2, r.output
    assert str(p) in r.stderr and "UTF-8" in r.stderr
    assert "internal error" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("text, field", [
    ("[ports]\npostgres = true\n", "ports.postgres"),
    ("[ports]\nproxy = false\n", "ports.proxy"),
    ("[app]\nworker_concurrency = true\n", "app.worker_concurrency"),
    ("[backup]\ncompression = true\n", "backup.compression"),
    ("[supervisor]\nstart_timeout = true\n", "supervisor.start_timeout"),
    ("[docker]\nstop_timeout = true\n", "docker.stop_timeout"),
])
def test_booleans_are_not_numbers(tmp_path, text, field):
    from aixsss_ops.config import load_config
    from aixsss_ops.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert f"{field}:" in e.value.message and "boolean" in e.value.message


def test_numbers_from_the_environment_still_work(tmp_path, monkeypatch):
    from aixsss_ops.config import load_config

    monkeypatch.setenv("AIXSSS_OPS_PORTS__PROXY", "18124")
    monkeypatch.setenv("AIXSSS_OPS_SUPERVISOR__START_TIMEOUT", "12.5")
    cfg = load_config(write(tmp_path, "[ports]\nredis = 16380\n"))
    assert (cfg.ports.proxy, cfg.ports.redis, cfg.supervisor.start_timeout) == (18124, 16380, 12.5)


@pytest.mark.parametrize("env, var", [
    ({"AIXSSS_OPS_PORTS__PROXY": "x"}, "AIXSSS_OPS_PORTS__PROXY"),
    ({"AIXSSS_OPS_PORTS__PROXY": "70000"}, "AIXSSS_OPS_PORTS__PROXY"),
    ({"AIXSSS_OPS_PORTS__PROXYY": "1"}, "AIXSSS_OPS_PORTS__PROXYY"),
    ({"AIXSSS_OPS_PORTS": "not json"}, "AIXSSS_OPS_PORTS"),
    ({"AIXSSS_OPS_PORTS": '{"redis": true}'}, "AIXSSS_OPS_PORTS"),
    ({"AIXSSS_OPS_RUNTIME": "k8s"}, "AIXSSS_OPS_RUNTIME"),
])
def test_an_environment_override_error_names_the_variable(tmp_path, env, var):
    cfg = write(tmp_path, "[ports]\nproxy = 18001\n")
    r = run_cli("config", "show", config=cfg, env=env)
    assert r.code == 2, r.output
    assert f"error: {var}: " in r.stderr, r.stderr
    assert str(cfg) not in r.stderr and "internal error" not in r.output


def test_a_file_error_still_names_the_file_when_another_key_comes_from_the_environment(tmp_path):
    cfg = write(tmp_path, "[ports]\nredis = 0\n")
    r = run_cli("config", "show", config=cfg, env={"AIXSSS_OPS_PORTS__PROXY": "18002"})
    assert r.code == 2 and f"{cfg}: ports.redis:" in r.stderr, r.stderr


@pytest.mark.parametrize("text, env, where", [
    ('host = "0.0.0.0"\n', {}, "ops.toml: host:"),
    ('host = "192.168.1.20"\n', {}, "ops.toml: host:"),
    ('host = "::"\n', {}, "ops.toml: host:"),
    ('host = ""\n', {}, "ops.toml: host:"),
    ("", {"AIXSSS_OPS_HOST": "0.0.0.0"}, "AIXSSS_OPS_HOST: host:"),
])
def test_a_public_host_is_refused_unless_allowed(tmp_path, text, env, where):
    cfg = write(tmp_path, text)
    r = run_cli("config", "show", config=cfg, env=env)
    assert r.code == 2, r.output
    assert where in r.stderr and "allow_public_host" in r.stderr, r.stderr
    ok = run_cli("--json", "config", "show", config=write(tmp_path, "allow_public_host = true\n" + text), env=env)
    assert ok.code == 0, ok.output
    assert ok.json["allow_public_host"] is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_opt_in(tmp_path, host):
    from aixsss_ops.config import load_config

    assert load_config(write(tmp_path, f'host = "{host}"\n')).host == host


def test_the_shipped_ops_toml_loads():
    from aixsss_ops.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "ops.toml")
    assert cfg.host == "127.0.0.1" and cfg.allow_public_host is False


@pytest.mark.parametrize("word, value", [("yes", True), ("On", True), ("1", True), ("no", False), ("off", False),
                                         ("false", False)])
def test_boolean_words_from_the_environment(tmp_path, monkeypatch, word, value):
    from aixsss_ops.config import load_config

    monkeypatch.setenv("AIXSSS_OPS_BACKUP__ENCRYPT", word)
    assert load_config(write(tmp_path, "")).backup.encrypt is value


def test_a_section_from_the_environment_is_merged_into_the_file(tmp_path, monkeypatch):
    from aixsss_ops.config import load_config

    monkeypatch.setenv("AIXSSS_OPS_PORTS", '{"redis": 16390}')
    monkeypatch.setenv("AIXSSS_OPS_PORTS__S3", "18340")
    cfg = load_config(write(tmp_path, "[ports]\nproxy = 18001\nredis = 16380\n"))
    assert (cfg.ports.proxy, cfg.ports.redis, cfg.ports.s3) == (18001, 16390, 18340)


def test_an_error_inside_a_process_names_the_process(tmp_path):
    from aixsss_ops.config import load_config
    from aixsss_ops.errors import ConfigError

    text = ('[app.processes.api]\ncommand = ["api"]\nport_env = "PORT"\n'
            '[app.processes.mailer]\ncommand = ["mail"]\nstop_timeout = 0\n')
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert "app.processes.mailer.stop_timeout:" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text.replace("stop_timeout = 0", 'ready = {http = "/h", log = "up"}')))
    assert "app.processes.mailer.ready: give one of http, log, redis_client" in e.value.message


def test_build_steps_may_be_bare_argument_lists(tmp_path, monkeypatch):
    from aixsss_ops.config import load_config

    cfg = load_config(write(tmp_path, '[app]\nbuild = [["npm", "ci"], {run = ["npm", "run", "build"], timeout = 60}]\n'))
    assert [(s.run, s.timeout) for s in cfg.app.build] == [(["npm", "ci"], 900.0), (["npm", "run", "build"], 60.0)]
    assert cfg.app.build[0].model_dump() == {"run": ["npm", "ci"], "cwd": ".", "timeout": 900.0, "env": {}}
    monkeypatch.setenv("AIXSSS_OPS_APP__BUILD", '[["make"]]')
    assert [s.run for s in load_config(write(tmp_path, "")).app.build] == [["make"]]


def test_secrets_never_show_in_a_repr_or_a_dump(tmp_path):
    from aixsss_ops.config import load_config

    cfg = load_config(write(tmp_path, '[s3]\nsecret_key = "s3cr3t-Value"\n'))
    assert "s3cr3t-Value" not in repr(cfg) and "s3cr3t-Value" not in str(cfg.model_dump())
    assert cfg.s3.secret_key.get_secret_value() == "s3cr3t-Value"
    assert cfg.public_dict()["s3"]["secret_key"] == "s3cr3t-Value"  # config show masks it on output



def test_a_role_of_count_n_is_n_processes_of_one_description(tmp_path, monkeypatch):
    from aixsss_ops import appspec
    from aixsss_ops.config import load_config
    from aixsss_ops.errors import ConfigError

    monkeypatch.delenv("AIXSSS_OPS_CONFIG", raising=False)
    text = ('[app.processes.api]\ncommand = ["api"]\nport_env = "PORT"\n'
            '[app.processes.worker]\ncommand = ["w"]\ncount = 3\nstop_timeout = 90\n'
            '[app.processes.mailer]\ncommand = ["m"]\nenv_file = "worker"\n')
    cfg = load_config(write(tmp_path, text))
    assert appspec.roles(cfg) == ("api", "worker", "worker.2", "worker.3", "mailer")
    assert appspec.others(cfg) == ("worker", "worker.2", "worker.3", "mailer")
    assert appspec.spec_of(cfg, "worker.3").stop_timeout == 90 and appspec.spec_of(cfg, "worker.3").command == ["w"]
    assert appspec.spec_of(cfg, "worker.4") is None and appspec.spec_of(cfg, "mailer.2") is None
    assert appspec.spec_of(cfg, "nope") is None and appspec.role_of("worker.2") == "worker"
    assert appspec.env_file_of("worker.2", appspec.spec_of(cfg, "worker.2")) == "worker"  # the role's env file
    with pytest.raises(ConfigError) as e:  # the api takes the color's port: one process
        load_config(write(tmp_path, text.replace('port_env = "PORT"\n', 'port_env = "PORT"\ncount = 2\n')))
    assert "api listens on the color's port or socket: count must be 1" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text.replace("count = 3", "count = 17")))
    assert "app.processes.worker.count" in e.value.message
    # an env variable names the file's process whatever its case (variables are written upper-case)
    monkeypatch.setenv("AIXSSS_OPS_APP__PROCESSES__WORKER__COUNT", "2")
    assert appspec.others(load_config(write(tmp_path, text))) == ("worker", "worker.2", "mailer")
