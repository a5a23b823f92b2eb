"""Playbook files: located errors (file:line: field: message), variables, the bundled playbooks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aixsss_ops.errors import UsageError
from aixsss_ops.playbook import model

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "book.yml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(model.PlaybookInvalid) as e:
        model.load(path)
    assert e.value.exit_code == 2
    return [str(x) for x in e.value.errors]


GOOD = """
name: demo
vars:
  version: null
  restore: false
steps:
  - id: live
    action: deploy.status
  - id: deploy
    action: deploy
    with:
      version: ${vars.version}
    timeout: 5m
    on_failure: back
rollbacks:
  back:
    - id: undo
      action: rollback
      with:
        to: ${steps.live.output.release}
"""


def test_a_valid_playbook_loads(tmp_path):
    book = model.load(write(tmp_path, GOOD))
    assert book.name == "demo"
    assert [s.id for s in book.spec.steps] == ["live", "deploy"]
    assert book.spec.steps[1].timeout == 300.0
    assert book.spec.steps[1].params == {"version": "${vars.version}"}
    assert list(book.spec.rollbacks) == ["back"]


@pytest.mark.parametrize("text, want", [
    # schema errors: the line of the field
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
         timeout: soon
     """, "book.yml:5: steps[0].timeout: not a duration"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
         retries: 3
     """, "book.yml:5: steps[0].retries: unknown field"),
    ("""
     name: demo
     steps:
       - action: deploy.status
     """, "book.yml:3: steps[0].id: required field missing"),
    ("""
     name: Demo Book
     steps: []
     """, "book.yml:1: name: expected a string matching regex"),
    # semantic errors
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
       - id: b
         action: deploy.statsu
     """, "book.yml:6: steps[1].action: unknown action 'deploy.statsu'"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy
         with:
           versoin: 1.0.0
     """, "book.yml:6: steps[0].with.versoin: unknown parameter of deploy"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy
         with:
           force: "yes please"
     """, "book.yml:6: steps[0].with.force: expected bool"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy
         on_failure: rollbak
     """, "book.yml:5: steps[0].on_failure: 'rollbak' is not abort, continue or a rollback list"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
         when: vars.missing
     """, "book.yml:5: steps[0].when: undeclared variable 'missing'"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
         when: steps.b.succeeded
       - id: b
         action: deploy.status
     """, "book.yml:5: steps[0].when: steps.b is a later step"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
         when: vars.x ==
     """, "book.yml:5: steps[0].when: expected a value"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
       - id: a
         action: smoke
     """, "book.yml:5: steps[1].id: duplicate step id 'a'"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
     rollbacks:
       r:
         - id: x
           action: rollback
           on_failure: r
     """, "book.yml:9: rollbacks.r[0].on_failure: 'r' is not abort, continue or a rollback step"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
         with:
           label: ${python.os}
     """, "book.yml:6: steps[0].with.label: unknown name 'python'"),
    # YAML itself
    ("""
     name: demo
     steps:
       - id: a
         action: [deploy
     """, "book.yml:5: yaml:"),
    ("""
     name: demo
     name: again
     steps: []
     """, "book.yml:2: name: duplicate key"),
])
def test_invalid_playbooks_give_located_errors(tmp_path, text, want):
    errs = errors_of(write(tmp_path, text))
    assert any(e.startswith(f"{tmp_path}/{want}") for e in errs), errs


def test_every_error_is_reported_at_once(tmp_path):
    errs = errors_of(write(tmp_path, """
        name: demo
        steps:
          - id: a
            action: nope
          - id: b
            action: deploy
            on_failure: nowhere
        """))
    assert [e.split(":")[1] for e in errs] == ["4", "7"]


def test_the_cli_names_file_line_and_field(tmp_path):
    from tests.cli import run_cli

    p = write(tmp_path, """
        name: demo
        steps:
          - id: a
            action: deploy.status
            timeout: -3
        """)
    r = run_cli("play", str(p), "--dry-run")
    assert r.code == 2, r.output
    assert f"{p}:5: steps[0].timeout: expected a number > 0.0" in r.stderr
    j = run_cli("--json", "play", str(p), "--dry-run")
    assert j.code == 2 and j.json["ok"] is False and ":5: steps[0].timeout" in j.json["error"]


def test_variables_from_cli_then_environment_then_default(tmp_path):
    book = model.load(write(tmp_path, """
        name: demo
        vars:
          version: null
          restore: false
          tries: 2
          who: {required: true}
        steps:
          - id: a
            action: deploy.status
        """))
    got = model.resolve_vars(book, {"restore": "yes", "who": "ci"}, {"AIXSSS_VAR_VERSION": "3.1.0",
                                                                        "AIXSSS_VAR_TRIES": "5"})
    assert got == {"version": "3.1.0", "restore": True, "tries": 5, "who": "ci"}
    assert model.resolve_vars(book, {"who": "x", "version": "1"}, {"AIXSSS_VAR_VERSION": "3"})["version"] == "1"
    with pytest.raises(UsageError, match="needs variable who"):
        model.resolve_vars(book, {}, {})
    with pytest.raises(UsageError, match="declares no variable verison"):
        model.resolve_vars(book, {"verison": "1", "who": "x"}, {})
    with pytest.raises(UsageError, match="is a boolean"):
        model.resolve_vars(book, {"restore": "maybe", "who": "x"}, {})


@pytest.mark.parametrize("name", ["release", "restore-drill", "rotate-key"])
def test_bundled_playbooks_are_valid(name):
    book = model.load(REPO / "playbooks" / f"{name}.yml")
    assert book.name == name


def test_release_playbook_shape():
    book = model.load(REPO / "playbooks" / "release.yml")
    ids = [s.id for s in book.spec.steps]
    assert ids.index("env") < ids.index("doctor") < ids.index("backup") < ids.index("migrate") < ids.index("deploy")
    assert ids.index("deploy") < ids.index("smoke")
    deploy = next(s for s in book.spec.steps if s.id == "deploy")
    assert deploy.on_failure == "rollback"
    assert [s.action for s in book.spec.rollbacks["rollback"]][0] == "rollback"
    assert any(s.action == "backup.restore" for s in book.spec.rollbacks["rollback"])


def test_docs_list_every_action_with_its_parameters():
    from aixsss_ops.playbook.actions import REGISTRY, reference_table

    test_only = {k: REGISTRY.pop(k) for k in list(REGISTRY) if k.startswith("test.")}  # the runner tests' actions
    try:
        table = reference_table()
    finally:
        REGISTRY.update(test_only)
    doc = (REPO / "docs" / "playbooks.md").read_text()
    assert table in doc, "docs/playbooks.md is stale: paste reference_table() under ## Actions"


# -- hostile documents: bounded while the YAML is composed, refused with a usage error naming the file --

def _bomb(levels: int, width: int = 9) -> str:
    lines = ["name: demo", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines += ["steps:", "  - {id: a, action: deploy.status}"]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text, what", [
    (_bomb(9), "aliases expand to"),               # a billion laughs: 9**10 nodes once expanded
    ("name: demo\na: &a [*a]\nsteps: []\n", "recursive alias"),
    ("name: demo\na: &a {b: *a}\nsteps: []\n", "recursive alias"),
    ("name: demo\nsteps: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("name: demo\nsteps: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested deeper than"),
])
def test_hostile_yaml_is_refused_quickly(tmp_path, text, what):
    p = tmp_path / "book.yml"
    p.write_text(text)
    with pytest.raises(model.PlaybookInvalid) as e:
        model.load(p)
    assert e.value.exit_code == 2
    assert str(p) in e.value.message and what in e.value.message, e.value.message


def test_a_too_large_document_is_refused(tmp_path):
    p = tmp_path / "book.yml"
    p.write_text("name: demo\nsteps:\n  - {id: a, action: deploy.status}\n" + "# padding\n" * 200_000)
    with pytest.raises(model.PlaybookInvalid) as e:
        model.load(p)
    assert str(p) in e.value.message and "bytes" in e.value.message


def test_aliases_within_bounds_still_work(tmp_path):
    book = model.load(write(tmp_path, """
        name: demo
        steps:
          - id: a
            action: deploy.status
            description: &d shared text
          - id: b
            action: deploy.status
            description: *d
        """))
    assert book.spec.steps[1].description == "shared text"


def test_deeply_nested_when_is_a_located_usage_error(tmp_path):
    p = write(tmp_path, f"""
        name: demo
        steps:
          - id: a
            action: deploy.status
            when: "{'(' * 3000}true{')' * 3000}"
        """)
    errs = errors_of(p)
    assert errs[0].startswith(f"{p}:5: steps[0].when:") and "nested deeper than" in errs[0], errs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    _bomb(9),
    "name: demo\na: &a [*a]\nsteps: []\n",
    "name: demo\nsteps:\n  - id: a\n    action: deploy.status\n    when: \"" + "not " * 5000 + "true\"\n",
])
def test_the_cli_refuses_hostile_playbooks_with_exit_2(tmp_path, text):
    from tests.cli import run_cli

    p = tmp_path / "book.yml"
    p.write_text(text)
    r = run_cli("play", str(p), "--dry-run", timeout=30)
    assert r.code == 2, r.output
    assert str(p) in r.stderr and "internal error" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("value, runs", [("true", True), ("false", False), ("yes", True), ("'vars.go'", True)])
def test_when_accepts_yaml_booleans(tmp_path, value, runs):
    book = model.load(write(tmp_path, f"""
        name: demo
        vars: {{go: true}}
        steps:
          - id: a
            action: deploy.status
            when: {value}
        """))
    from aixsss_ops.playbook import expr

    assert bool(expr.parse(book.spec.steps[0].when).evaluate({"vars": {"go": True}})) is runs


def test_when_still_rejects_numbers_and_lists(tmp_path):
    errs = errors_of(write(tmp_path, """
        name: demo
        steps:
          - id: a
            action: deploy.status
            when: [a]
        """))
    assert "steps[0].when" in errs[0]


def test_a_null_timeout_means_the_default(tmp_path):
    book = model.load(write(tmp_path, """
        name: demo
        steps:
          - {id: a, action: deploy.status, timeout: null}
          - {id: b, action: deploy.status, timeout: "90s"}
        """))
    assert [s.timeout for s in book.spec.steps] == [None, 90.0]


@pytest.mark.parametrize("text, want", [
    ("""
     name: demo
     vars:
       Bad: 1
     steps:
       - id: a
         action: deploy.status
     """, "book.yml:3: vars.Bad: a name of lowercase letters"),
    ("""
     name: demo
     steps:
       - id: a
         action: deploy.status
     rollbacks:
       undo:
         - id: x
           action: rollback
           retries: 2
     """, "book.yml:9: rollbacks.undo[0].retries: unknown field"),
    ("""
     name: demo
     vars:
       who:
         required: maybe
     steps:
       - id: a
         action: deploy.status
     """, "book.yml:4: vars.who.required: expected a boolean, got a string"),
])
def test_schema_errors_name_mapping_keys_and_list_items(tmp_path, text, want):
    errs = errors_of(write(tmp_path, text))
    assert any(e.startswith(f"{tmp_path}/{want}") for e in errs), errs


def test_shorthands_of_variables_conditions_and_durations(tmp_path):
    book = model.load(write(tmp_path, """
        name: demo
        vars:
          version: 1.0.0
        steps:
          - id: a
            action: deploy.status
            when: true
            timeout: 5m
        """))
    assert book.spec.vars["version"].default == "1.0.0" and book.spec.vars["version"].required is False
    assert (book.spec.steps[0].when, book.spec.steps[0].timeout) == ("true", 300.0)
