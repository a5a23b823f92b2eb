"""The `when` language and `${...}` interpolation: a small, safe expression language (no Python eval).

    expr    := or
    or      := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | compare
    compare := primary [('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' | 'not' 'in') primary]
    primary := STRING | NUMBER | 'true' | 'false' | 'null' | path | '(' expr ')' | '[' [expr (',' expr)*] ']'
    path    := NAME ('.' NAME | '[' (STRING | NUMBER) ']')*

A path reads the run's context (``vars``, ``steps``, ``env``, ``run``, ``failure``); a missing key is null.
An expression is at most ``MAX_LENGTH`` characters and nests ``(``, ``[`` and ``not`` at most ``MAX_NESTING`` deep,
so neither parsing nor evaluation can exhaust the stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROOTS = ("vars", "steps", "env", "run", "failure")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\.)
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.X,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_INTERP = re.compile(r"\$\{([^}]*)\}")
_BLANK_TO_END = re.compile(r"\s*\Z")
MAX_LENGTH = 10_000
MAX_NESTING = 32


class ExprError(ValueError):
    """A syntax or evaluation error; the message names the expression."""


@dataclass(frozen=True)
class Tok:
    kind: str  # number, string, op, name, kw, end
    value: str
    pos: int


def tokenize(text: str) -> list[Tok]:
    toks, pos = [], 0
    while pos < len(text):
        if _BLANK_TO_END.match(text, pos):  # not text[pos:].strip(): that copies the rest at every token
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos:].lstrip()[:1]!r} at column {pos + 1} in {text!r}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "name" and value in _KEYWORDS:
            kind = "kw"
        toks.append(Tok(kind, value, m.start(m.lastgroup)))
        pos = m.end()
    toks.append(Tok("end", "", len(text)))
    return toks


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.fail(f"expression nested deeper than {MAX_NESTING} levels of '(', '[' or 'not'")

    def peek(self) -> Tok:
        return self.toks[self.i]

    def take(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, kind: str, value: str | None = None) -> Tok | None:
        t = self.peek()
        if t.kind == kind and (value is None or t.value == value):
            self.i += 1
            return t
        return None

    def expect(self, kind: str, value: str) -> None:
        if not self.accept(kind, value):
            self.fail(f"expected {value!r}")

    def fail(self, what: str):
        t = self.peek()
        got = "the end" if t.kind == "end" else repr(t.value)
        raise ExprError(f"{what} at column {t.pos + 1}, got {got}, in {self.text!r}")

    def parse(self):
        node = self.or_()
        if self.peek().kind != "end":
            self.fail("expected an operator or the end")
        return node

    # `a or b or c` is one ("or", [a, b, c]) node, not a left-leaning chain: only (, [ and not add depth
    def or_(self):
        items = [self.and_()]
        while self.accept("kw", "or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else ("or", items)

    def and_(self):
        items = [self.not_()]
        while self.accept("kw", "and"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else ("and", items)

    def not_(self):
        if self.accept("kw", "not"):
            self.nest()
            node = ("not", self.not_())
            self.depth -= 1
            return node
        return self.compare()

    def compare(self):
        left = self.primary()
        t = self.peek()
        if t.kind == "op" and t.value in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return ("cmp", t.value, left, self.primary())
        if self.accept("kw", "in"):
            return ("cmp", "in", left, self.primary())
        nxt = self.toks[self.i + 1] if t.kind != "end" else t
        if t.kind == "kw" and t.value == "not" and nxt.kind == "kw" and nxt.value == "in":
            self.i += 2
            return ("cmp", "not in", left, self.primary())
        return left

    def primary(self):
        t = self.take()
        if t.kind == "number":
            return ("lit", float(t.value) if "." in t.value else int(t.value))
        if t.kind == "string":
            return ("lit", _unquote(t.value))
        if t.kind == "kw" and t.value in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[t.value])
        if t.kind == "op" and t.value == "(":
            self.nest()
            node = self.or_()
            self.expect("op", ")")
            self.depth -= 1
            return node
        if t.kind == "op" and t.value == "[":
            self.nest()
            items = []
            if not self.accept("op", "]"):
                items.append(self.or_())
                while self.accept("op", ","):
                    items.append(self.or_())
                self.expect("op", "]")
            self.depth -= 1
            return ("list", items)
        if t.kind == "name":
            parts: list[str | int] = [t.value]
            while True:
                if self.accept("op", "."):
                    n = self.take()
                    if n.kind not in ("name", "kw", "number"):
                        self.i -= 1
                        self.fail("expected a name after '.'")
                    parts.append(n.value)
                elif self.accept("op", "["):
                    k = self.take()
                    if k.kind == "string":
                        parts.append(_unquote(k.value))
                    elif k.kind == "number" and "." not in k.value:
                        parts.append(int(k.value))
                    else:
                        self.i -= 1
                        self.fail("expected a string or an integer index")
                    self.expect("op", "]")
                else:
                    break
            return ("path", tuple(parts))
        self.i -= 1
        self.fail("expected a value")


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


@dataclass(frozen=True)
class Expr:
    text: str
    ast: tuple

    def paths(self) -> list[tuple]:
        out: list[tuple] = []

        def walk(n):
            if n[0] == "path":
                out.append(n[1])
            elif n[0] in ("or", "and"):
                for x in n[1]:
                    walk(x)
            elif n[0] == "not":
                walk(n[1])
            elif n[0] == "cmp":
                walk(n[2])
                walk(n[3])
            elif n[0] == "list":
                for x in n[1]:
                    walk(x)

        walk(self.ast)
        return out

    def evaluate(self, ctx: Mapping[str, Any]) -> Any:
        return _eval(self.ast, ctx, self.text)


def parse(text: str) -> Expr:
    if not isinstance(text, str) or not text.strip():
        raise ExprError("an empty expression")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression too long ({len(text)} characters, at most {MAX_LENGTH}): {text[:40]!r}...")
    return Expr(text, _Parser(text).parse())


def _lookup(ctx: Mapping[str, Any], parts: tuple) -> Any:
    cur: Any = ctx
    for p in parts:
        if isinstance(cur, Mapping):
            cur = cur.get(p)
        elif isinstance(cur, list | tuple) and isinstance(p, int):
            cur = cur[p] if -len(cur) <= p < len(cur) else None
        else:
            return None
    return cur


def _eval(n: tuple, ctx: Mapping[str, Any], text: str) -> Any:
    kind = n[0]
    if kind == "lit":
        return n[1]
    if kind == "path":
        return _lookup(ctx, n[1])
    if kind == "list":
        return [_eval(x, ctx, text) for x in n[1]]
    if kind == "not":
        return not _eval(n[1], ctx, text)
    if kind in ("and", "or"):  # short-circuits and returns the deciding operand, like Python's and/or
        v = None
        for x in n[1]:
            v = _eval(x, ctx, text)
            if (not v) if kind == "and" else v:
                return v
        return v
    op, a, b = n[1], _eval(n[2], ctx, text), _eval(n[3], ctx, text)
    try:
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == "in":
            return a in b if b is not None else False
        if op == "not in":
            return a not in b if b is not None else True
        if a is None or b is None:
            return False
        return _order(op, a, b)
    except TypeError:
        raise ExprError(f"cannot compare {a!r} {op} {b!r} in {text!r}") from None


def _order(op: str, a: Any, b: Any) -> bool:
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


# -- ${...} interpolation in step parameters --

def template_exprs(value: Any) -> list[Expr]:
    """Every ``${...}`` expression inside a parameter value (strings, lists, mappings)."""
    if isinstance(value, str):
        return [parse(m.group(1)) for m in _INTERP.finditer(value)]
    if isinstance(value, list):
        return [e for v in value for e in template_exprs(v)]
    if isinstance(value, dict):
        return [e for v in value.values() for e in template_exprs(v)]
    return []


def has_template(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_INTERP.search(value))
    if isinstance(value, list):
        return any(has_template(v) for v in value)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    return False


def render(value: Any, ctx: Mapping[str, Any]) -> Any:
    """Substitute ``${expr}``; a string that is exactly one ``${expr}`` keeps the value's type (null, bool, number)."""
    if isinstance(value, str):
        m = _INTERP.fullmatch(value.strip())
        if m:
            return parse(m.group(1)).evaluate(ctx)
        return _INTERP.sub(lambda m: _text(parse(m.group(1)).evaluate(ctx)), value)
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: render(v, ctx) for k, v in value.items()}
    return value


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
