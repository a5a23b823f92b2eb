"""Start-up: what a command imports (no pydantic on the common paths), and the plain-value shortcut of typer's
parameter conversion giving what typer's own conversion gives."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from typer import _coercion
from typer.models import OptionInfo

from aixsss_ops.cli.main import _unchanged
from tests.cli import run_cli


def _imports_pydantic(args: list[str]) -> bool:
    code = ("import sys\nfrom aixsss_ops.cli.main import run\n"
            f"try:\n    run({args!r})\nexcept SystemExit:\n    pass\n"
            "print('pydantic' in sys.modules, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"NO_COLOR": "1"})
    return p.stderr.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("args", [["config", "show"], ["deploy", "status"], ["rollback", "--help"], ["--help"]])
def test_common_commands_do_not_import_pydantic(tmp_path, args):
    cfg = tmp_path / "ops.toml"
    app = (tmp_path / "app").resolve()
    app.mkdir()
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[app]\nsource = "{app}"\n')
    assert not _imports_pydantic(["--config", str(cfg), *args])


CASES = [
    (str, {}, "x"), (str, {}, ""), (str, {}, None),
    (int, {}, 5), (int, {"min": 1}, 5), (int, {"min": 1}, 0), (int, {}, "5"), (int, {}, True),
    (float, {"min": 0.1}, 3.0), (float, {"min": 0.1}, 0.01), (float, {}, "2.5"), (float, {"max": 2.0}, 3.0),
    (float, {"min": 1.0, "clamp": True}, 0.5), (float, {}, 3),
]


def _typer(desc, param, value):
    full = _coercion.build_runtime_param(desc)
    try:
        return "ok", full.coerce(value, param=param, ctx=None)
    except Exception as e:  # typer's BadParameter
        return "error", type(e).__name__


@pytest.mark.parametrize("annotation, info, value", CASES)
def test_plain_values_convert_as_typer_converts_them(annotation, info, value):
    desc = _coercion.resolve_type_descriptor(annotation, OptionInfo(**info))
    param = SimpleNamespace(multiple=False, nargs=1)
    ok, same = _unchanged(desc, param, value)
    if ok:
        assert _typer(desc, param, value) == ("ok", same)
        assert type(same) is type(_typer(desc, param, value)[1])


@pytest.mark.parametrize("value", [("a", "b"), ["a"], (), ("a", 1)])
def test_a_list_of_strings_converts_as_typer_converts_it(value):
    desc = _coercion.resolve_type_descriptor(list[str], OptionInfo())
    param = SimpleNamespace(multiple=True, nargs=1)
    ok, same = _unchanged(desc, param, value)
    assert ok == all(isinstance(v, str) for v in value)
    if ok:
        assert _typer(desc, param, value) == ("ok", same)


def test_the_shortcut_takes_the_plain_values_it_is_for():
    param = SimpleNamespace(multiple=False, nargs=1)
    for annotation, info, value in [(str, {}, "x"), (int, {"min": 1}, 5), (float, {"min": 0.1}, 3.0)]:
        assert _unchanged(_coercion.resolve_type_descriptor(annotation, OptionInfo(**info)), param, value)[0]
    for annotation, info, value in [(int, {}, "5"), (float, {"min": 0.1}, 0.01), (int, {}, True)]:
        assert not _unchanged(_coercion.resolve_type_descriptor(annotation, OptionInfo(**info)), param, value)[0]


def test_other_values_still_get_typers_conversion_and_errors(tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    low = run_cli("doctor", "--only", "env", "--timeout", "0.01", config=cfg)
    assert low.code == 2 and "Invalid value for '--timeout'" in low.stderr and "0.1" in low.stderr
    bad = run_cli("doctor", "--only", "env", "--timeout", "abc", config=cfg)
    assert bad.code == 2 and "Invalid value for '--timeout'" in bad.stderr
    given = run_cli("--json", "doctor", "--only", "env", "--timeout", "2", config=cfg)
    assert given.code in (0, 3) and given.json
