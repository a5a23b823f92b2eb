"""Fuzzing the parsers of untrusted input (ops.toml, env files, playbooks, `when` expressions) and the commands
that read them: whatever the input, the answer is a result or a usage error (exit 2; exit 3 for an env that
fails its checks), never a traceback or an "internal error", and a secret placed in the input never comes out.

The CLI runs in-process (typer's CliRunner) to keep this file fast; every example uses a fresh secret, so a
value the scrubber learnt in an earlier example cannot mask a leak."""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import secrets
import shutil
import string
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aixsss_ops import envfile
from aixsss_ops.config import OpsConfig, load_config
from aixsss_ops.errors import ConfigError, UsageError
from aixsss_ops.playbook import expr, model

FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
CLI_FUZZ = settings(FUZZ, max_examples=30)

# -- helpers --

WORK = Path(tempfile.mkdtemp(prefix="aixsss-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)
BASE_CONFIG = WORK / "ops.toml"
BASE_CONFIG.write_text(f'state_dir = "{WORK / "state"}"\n')
_n = iter(range(10**9))


def fresh_path(suffix: str) -> Path:
    return WORK / f"f{next(_n)}{suffix}"


def new_secret() -> str:
    return "Sx" + secrets.token_hex(12)


def invoke(args: list[str], env: dict[str, str] | None = None):
    from aixsss_ops.cli.main import app

    clean = {k: None for k in os.environ if k.startswith("AIXSSS_") or k in ("DATABASE_URL", "REDIS_URL")}
    clean.update({"NO_COLOR": "1", "COLUMNS": "200"})
    clean.update(env or {})
    r = CliRunner().invoke(app, args, env=clean, catch_exceptions=True)
    out = r.stdout + (r.stderr if r.stderr_bytes is not None else "")
    return r, out


def assert_clean(r, out: str, allowed: set[int], secret: str | None = None) -> None:
    # an exception that escaped the command (not typer's own exit) is a traceback for the user
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.exception, out)
    assert "Traceback" not in out and "internal error" not in out, out
    assert r.exit_code in allowed, (r.exit_code, out)
    if secret:
        assert secret not in out, out


# -- ops.toml --

KNOWN_KEYS = {
    "": sorted(OpsConfig.model_fields.keys() - {"config_path"}),
    **{name: sorted(f.annotation.model_fields) for name, f in OpsConfig.model_fields.items()
       if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields")},
}
names = st.one_of(st.sampled_from(sorted({k for ks in KNOWN_KEYS.values() for k in ks})),
                  st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
toml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
scalars = st.one_of(st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), toml_text,
                    st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost", "docker", "local", "s3", "",
                                     "1.0.0", "production", "-1", "65536", "8080"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


@st.composite
def ops_toml(draw) -> tuple[str, str]:
    """Valid TOML: random known and unknown keys, random values, and a secret in a secret key."""
    secret = new_secret()
    top = draw(st.dictionaries(names, values, max_size=4))
    sections = draw(st.dictionaries(st.one_of(st.sampled_from(sorted(k for k in KNOWN_KEYS if k)), names),
                                    st.dictionaries(names, values, max_size=4), max_size=4))
    s3 = sections.setdefault("s3", {})
    s3[draw(st.sampled_from(["secret_key", "secret_key", "secret_keyy"]))] = secret
    top.pop("s3", None)
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items() if k not in sections]
    for sec, kv in sections.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in kv.items()]
    return "\n".join(lines) + "\n", secret


@FUZZ
@given(ops_toml())
def test_random_ops_toml_loads_or_is_a_config_error(doc):
    text, secret = doc
    p = fresh_path(".toml")
    p.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(p)
    except ConfigError as e:
        assert e.exit_code == 2 and str(p) in e.message, e.message
        assert secret not in e.message + (e.hint or "")
    else:
        assert cfg.s3.secret_key.get_secret_value() == secret


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_ops_toml(data):
    p = fresh_path(".toml")
    p.write_bytes(data)
    try:
        load_config(p)
    except ConfigError as e:
        assert e.exit_code == 2 and str(p) in e.message


@CLI_FUZZ
@given(ops_toml(), st.sampled_from([[], ["--json"]]))
def test_config_show_on_random_ops_toml(doc, flags):
    text, secret = doc
    p = fresh_path(".toml")
    p.write_text(text, encoding="utf-8")
    r, out = invoke(["--config", str(p), *flags, "config", "show"])
    assert_clean(r, out, {0, 2}, secret)


@CLI_FUZZ
@given(st.dictionaries(st.sampled_from(["AIXSSS_OPS_PORTS__PROXY", "AIXSSS_OPS_PORTS", "AIXSSS_OPS_HOST",
                                        "AIXSSS_OPS_RUNTIME", "AIXSSS_OPS_S3__SECRET_KEY", "AIXSSS_OPS_S3",
                                        "AIXSSS_OPS_APP__WORKER_CONCURRENCY", "AIXSSS_OPS_ALLOW_PUBLIC_HOST"]),
                       st.one_of(st.text(string.printable, max_size=20),
                                 st.sampled_from(["true", "0", "{}", '{"proxy": true}', "[1]", "0.0.0.0", "18001"])),
                       min_size=1, max_size=3))
def test_config_show_with_random_environment_overrides(env):
    secret = new_secret()
    env = {**env, "AIXSSS_OPS_S3__SECRET_KEY": secret}
    r, out = invoke(["--config", str(BASE_CONFIG), "config", "show"], env=env)
    assert_clean(r, out, {0, 2}, secret)
    if r.exit_code == 2:
        assert "AIXSSS_OPS_" in out, out  # the error names the variable


# -- env files --

env_lines = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
              st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e"
                                    "\x85\u2028\u2029"), max_size=30)),
    st.sampled_from(["", "# comment", "export NODE_ENV=production", "PORT=abc", "=x", "KEY", "KEY = 'a b'",
                     'QUOTED="a\\nb"', "DATABASE_URL=postgresql://u:pw@localhost:5432/db?schema=public",
                     "REDIS_URL=redis://localhost:6379", "NODE_ENV=production", "JWT_SECRET=short"]),
    st.text(max_size=30),
)


@st.composite
def env_file(draw) -> tuple[str, str]:
    secret = new_secret()
    lines = draw(st.lists(env_lines, max_size=8))
    lines.insert(draw(st.integers(0, len(lines))), f"API_KEY_ENCRYPTION_KEY={secret}")
    return "\n".join(lines) + "\n", secret


@FUZZ
@given(env_file())
def test_envfile_parse_returns_a_mapping_or_names_the_line(doc):
    text, secret = doc
    try:
        env = envfile.parse(text, "x.env")
    except UsageError as e:
        assert e.message.startswith("x.env:") and secret not in e.message
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


@CLI_FUZZ
@given(st.one_of(env_file(), st.binary(max_size=200).map(lambda b: (b, None))),
       st.sampled_from([["--service", "api"], ["--service", "worker"], ["--service", "api", "--strict"]]),
       st.sampled_from([[], ["--json"]]))
def test_env_validate_on_random_env_files(doc, service, flags):
    content, secret = doc
    p = fresh_path(".env")
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    r, out = invoke(["--config", str(BASE_CONFIG), *flags, "env", "validate", *service, "--env-file", str(p)])
    assert_clean(r, out, {0, 2, 3}, secret)  # 3: the env fails its checks


# -- playbooks --

ACTIONS = ["deploy.status", "backup.verify", "doctor", "env.validate", "migrate.status", "nope", "smoke"]
when_tokens = st.sampled_from(["vars.a", "steps.one.status", "env.X", "run.failed", "failure.step", "true", "false",
                               "null", "1", "-2.5", "'txt'", '"q"', "==", "!=", "<", ">=", "in", "not", "and", "or",
                               "(", ")", "[", "]", ",", ".", "x", "vars", "[0]", "['k']", "$", ";", "=", "{"])
when_exprs = st.one_of(st.lists(when_tokens, max_size=14).map(" ".join), st.text(max_size=40),
                       st.integers(1, 80).map(lambda n: "(" * n + "true" + ")" * n),
                       st.integers(1, 80).map(lambda n: "not " * n + "vars.a"))


@FUZZ
@given(when_exprs)
def test_when_expressions_parse_or_raise_expr_error(text):
    ctx = {"vars": {"a": 1}, "steps": {"one": {"status": "succeeded"}}, "env": {"X": "y"}, "run": {"failed": False},
           "failure": {}}
    try:
        x = expr.parse(text)
    except expr.ExprError:
        return
    with contextlib.suppress(expr.ExprError):
        x.evaluate(ctx)
    assert isinstance(x.paths(), list)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=20),
                         when_exprs, st.sampled_from(["${env.API_KEY_ENCRYPTION_KEY}", "${vars.a}", "5m", "-3", "x"]))
yaml_values = st.recursive(yaml_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), c, max_size=3)),
                           max_leaves=10)


@st.composite
def playbook_doc(draw) -> str:
    step = st.fixed_dictionaries(
        {"id": st.one_of(st.sampled_from(["one", "two", "three"]), st.text(max_size=6)),
         "action": st.sampled_from(ACTIONS)},
        optional={"with": st.one_of(st.dictionaries(st.sampled_from(["id", "restore", "only", "x"]), yaml_scalars,
                                                    max_size=2), yaml_values),
                  "when": st.one_of(when_exprs, st.booleans(), yaml_scalars),
                  "timeout": st.one_of(st.sampled_from(["5m", "30s", "-1", "soon", 0, 3]), yaml_scalars),
                  "on_failure": st.sampled_from(["abort", "continue", "back", "nowhere"]),
                  "description": yaml_scalars})
    doc = draw(st.fixed_dictionaries(
        {"name": st.one_of(st.just("fuzz"), yaml_scalars)},
        optional={"steps": st.one_of(st.lists(step, max_size=3), yaml_values),
                  "vars": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "Bad"]), yaml_scalars, max_size=2),
                                    yaml_values),
                  "rollbacks": st.one_of(st.dictionaries(st.just("back"), st.lists(step, max_size=2), max_size=1),
                                         yaml_values),
                  "extra": yaml_values}))
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=draw(st.booleans()))


hostile_yaml = st.one_of(
    st.integers(1, 12).map(lambda n: "name: x\na0: &a0 [1,1,1,1,1,1,1,1]\n" + "".join(
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 8) + "]\n" for i in range(1, n)) + "steps: []\n"),
    st.integers(1, 300).map(lambda n: "name: x\nsteps: " + "[" * n + "]" * n + "\n"),
    st.sampled_from(["a: &a [*a]\n", "a: &a {b: *a}\n", "*nope\n", "!!python/object:os.system {}\n",
                     "a: !!binary '!!!'\n", "a: !!timestamp 2024-99-99\n", "? [a]\n: b\n", "- 1\n- 2\n", "---\n---\n",
                     "name: x\nsteps:\n  - {id: a, action: deploy.status, when: true}\n", "{a: 1, a: 2}\n"]),
)


def _load(p: Path) -> None:
    try:
        model.load(p)
    except UsageError as e:
        assert e.exit_code == 2 and str(p) in e.message, e.message


@FUZZ
@given(st.one_of(playbook_doc(), hostile_yaml, st.text(max_size=200)))
def test_random_playbooks_load_or_give_a_located_error(text):
    p = fresh_path(".yml")
    p.write_text(text, encoding="utf-8")
    _load(p)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_a_playbook(data):
    p = fresh_path(".yml")
    p.write_bytes(data)
    _load(p)


@CLI_FUZZ
@given(st.one_of(playbook_doc(), hostile_yaml), st.sampled_from([[], ["--json"]]),
       st.lists(st.sampled_from(["a=1", "b=true", "a", "=x", "Bad=1", "zz=2"]), max_size=2))
def test_play_dry_run_on_random_playbooks(text, flags, var_args):
    secret = new_secret()
    p = fresh_path(".yml")
    p.write_text(text, encoding="utf-8")
    args = ["--config", str(BASE_CONFIG), *flags, "play", str(p), "--dry-run"]
    for v in var_args:
        args += ["--var", v]
    r, out = invoke(args, env={"API_KEY_ENCRYPTION_KEY": secret, "MY_TOKEN": secret, "X": secret})
    assert_clean(r, out, {0, 2}, secret)


# -- random command lines --

arg_tokens = st.one_of(
    st.sampled_from(["--json", "--yes", "-q", "-v", "--verbose", "--strict", "--environ", "--service", "api", "web",
                     "all", "nope", "--env-file", "--var", "a=1", "--", "-", "--config", "--dry-run", "--help",
                     "show", "validate", "x=y", "--unknown"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12))


@CLI_FUZZ
@given(st.sampled_from([["config", "show"], ["env", "validate"], ["play", "fuzz.yml", "--dry-run"]]),
       st.lists(arg_tokens, max_size=5))
def test_random_arguments(command, extra):
    book = WORK / "fuzz.yml"
    if not book.exists():
        book.write_text("name: fuzz\nvars: {a: 0}\nsteps:\n  - {id: one, action: deploy.status}\n")
    secret = new_secret()
    if command[0] == "play":
        command = ["play", str(book), "--dry-run"]  # --dry-run stays: random arguments must never run a step
    r, out = invoke(["--config", str(BASE_CONFIG), *command, *extra],
                    env={"API_KEY_ENCRYPTION_KEY": secret, "AIXSSS_OPS_S3__SECRET_KEY": secret})
    assert_clean(r, out, {0, 2, 3}, secret)
