"""The `when` language and ${...} interpolation: a small parser, no Python eval."""

from __future__ import annotations

import pytest

from aixsss_ops.playbook import expr

CTX = {
    "vars": {"version": "2.0.0", "restore": True, "n": 3, "empty": None},
    "steps": {"deploy": {"status": "failed", "output": None, "failed": True},
              "backup": {"status": "succeeded", "output": {"id": "20250101T000000Z", "tables": ["a", "b"]}}},
    "env": {"CI": "true"},
    "run": {"failed": True},
}


@pytest.mark.parametrize("text, want", [
    ("vars.restore", True),
    ("not vars.restore", False),
    ("vars.version == '2.0.0'", True),
    ('vars.version != "2.0.0"', False),
    ("vars.n >= 3 and vars.n < 4", True),
    ("vars.n > 3 or steps.deploy.failed", True),
    ("steps.deploy.status == 'failed' and steps.backup.status == 'succeeded'", True),
    ("steps.backup.output.id", "20250101T000000Z"),
    ("steps.backup.output.tables[1]", "b"),
    ("steps.backup.output['id'] == '20250101T000000Z'", True),
    ("'a' in steps.backup.output.tables", True),
    ("'c' not in steps.backup.output.tables", True),
    ("vars.version in ['1.0.0', '2.0.0']", True),
    ("steps.deploy.output.release", None),  # missing keys read as null
    ("steps.nope.status == null", True),
    ("vars.empty < 3", False),  # ordering against null is false, not an error
    ("env.CI == 'true'", True),
    ("(vars.n == 1 or vars.n == 3) and not (run.failed == false)", True),
    ("-1 < 0.5", True),
])
def test_evaluates(text, want):
    assert expr.parse(text).evaluate(CTX) == want


@pytest.mark.parametrize("text, fragment", [
    ("vars.x ==", "expected a value"),
    ("vars.x = 1", "unexpected character"),
    ("__import__('os').system('id')", "expected an operator"),
    ("vars.x; 1", "unexpected character"),
    ("(vars.x", "expected ')'"),
    ("", "empty"),
    ("vars.", "expected a name"),
])
def test_rejects(text, fragment):
    with pytest.raises(expr.ExprError, match=None) as e:
        expr.parse(text)
    assert fragment in str(e.value)


def test_no_python_is_evaluated():
    # attribute-like paths only read mappings: nothing callable, no dunder access to objects
    ctx = {"vars": {"x": "abc"}}
    assert expr.parse("vars.x.__class__").evaluate(ctx) is None
    assert expr.parse("vars.x.upper").evaluate(ctx) is None


def test_ordering_of_incompatible_types_is_an_error():
    with pytest.raises(expr.ExprError, match="cannot compare"):
        expr.parse("vars.version < 3").evaluate(CTX)


def test_render_keeps_types_for_a_whole_expression_and_substitutes_text_otherwise():
    assert expr.render("${vars.restore}", CTX) is True
    assert expr.render("${vars.empty}", CTX) is None
    assert expr.render("${ vars.n }", CTX) == 3
    assert expr.render("pre-release ${vars.version} (${vars.restore})", CTX) == "pre-release 2.0.0 (true)"
    assert expr.render({"a": ["${steps.backup.output.id}"]}, CTX) == {"a": ["20250101T000000Z"]}
    assert expr.render("no template", CTX) == "no template"


def test_paths_lists_every_reference():
    x = expr.parse("vars.a and steps.b.status == 'x' or not env.C")
    assert x.paths() == [("vars", "a"), ("steps", "b", "status"), ("env", "C")]


@pytest.mark.parametrize("text", [
    "(" * 2000 + "true" + ")" * 2000,
    "not " * 2000 + "true",
    "[" * 2000 + "]" * 2000,
    "vars.n in " + "[" * 3000 + "1" + "]" * 3000,
])
def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(text):
    with pytest.raises(expr.ExprError) as e:
        expr.parse(text)
    assert "nested deeper than" in str(e.value)


def test_long_and_or_chains_are_bounded_before_evaluation():
    text = " and ".join(["vars.restore"] * 5000)
    with pytest.raises(expr.ExprError) as e:
        expr.parse(text)
    assert "too long" in str(e.value)
    # a long chain within the limit is flat: no recursion proportional to its length
    chain = " and ".join(["vars.restore"] * 580)
    x = expr.parse(chain)
    assert x.evaluate(CTX) is True and len(x.paths()) == 580
    assert expr.parse(" or ".join(["vars.empty"] * 580) + " or vars.n").evaluate(CTX) == 3


def test_reasonable_nesting_still_parses():
    text = "(" * 20 + "not " * 11 + "vars.restore" + ")" * 20
    assert expr.parse(text).evaluate(CTX) is False
    assert expr.parse(" or ".join(["vars.restore"] * 50)).evaluate(CTX) is True
