"""The playbook format: YAML read with line numbers, converted to msgspec models, then checked against the
action registry and the expression language. Every error names the file, the line and the field."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from msgspec import field as spec_field

from aixsss_ops.errors import UsageError
from aixsss_ops.playbook import expr
from aixsss_ops.playbook.actions import REGISTRY
from aixsss_ops.validate import ValidationError, convert, located

_ID = r"^[a-z][a-z0-9_]*$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
ABORT, CONTINUE = "abort", "continue"
# Bounds of a playbook document, enforced while the YAML is composed (before anything is expanded or built):
MAX_BYTES = 1024 * 1024  # the file
MAX_DEPTH = 64  # nesting of mappings and sequences, counting what aliases bring in
MAX_NODES = 100_000  # nodes once every alias is expanded (a "billion laughs" document is refused here)
MAX_ALIASES = 1_000  # alias references


def parse_duration(v: Any) -> Any:
    """``90``, ``"90s"``, ``"5m"``, ``"1h"`` → seconds."""
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise ValueError(f"not a duration: {v!r} (use seconds, or e.g. '30s', '5m', '1h')")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return v


class VarSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    default: Any = None
    required: bool = False
    description: str = ""


class StepSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(pattern=_ID)]
    action: str
    params: dict[str, Any] = spec_field(default_factory=dict, name="with")
    when: str | None = None
    timeout: Annotated[float, Meta(gt=0)] | None = None
    on_failure: str = ABORT
    description: str = ""


class PlaybookSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    description: str = ""
    vars: dict[str, VarSpec] = spec_field(default_factory=dict)
    steps: Annotated[list[StepSpec], Meta(min_length=1)]
    rollbacks: dict[str, list[StepSpec]] = spec_field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, names in (("vars", self.vars), ("rollbacks", self.rollbacks)):
            for n in names:
                if not re.match(_ID, n):
                    raise ValueError(f"{kind}.{n}: a name of lowercase letters, digits and _, starting with a letter")


def _shorthands(data: dict) -> list[tuple[tuple, str]]:
    """What the YAML may write shorter, in place: a variable given by its default (``x: 1``), ``when: true``
    (YAML's boolean: the expression ``true``) and durations (``timeout: 5m``). Returns the durations that are
    none, located."""
    errors = []
    if isinstance(data.get("vars"), dict):
        data["vars"] = {k: v if isinstance(v, dict) else {"default": v} for k, v in data["vars"].items()}
    lists = [(("steps",), data.get("steps"))]
    if isinstance(data.get("rollbacks"), dict):
        lists += [(("rollbacks", k), v) for k, v in data["rollbacks"].items()]
    for base, steps in lists:
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            if not isinstance(step, dict):
                continue
            if isinstance(step.get("when"), bool):
                step["when"] = "true" if step["when"] else "false"
            if "timeout" in step:
                try:
                    step["timeout"] = parse_duration(step["timeout"])
                except ValueError as e:
                    errors.append(((*base, i, "timeout"), str(e)))
    return errors


@dataclass(frozen=True)
class Located:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class PlaybookInvalid(UsageError):
    def __init__(self, errors: list[Located]):
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"invalid playbook: {errors[0]}{more}", details="\n".join(str(e) for e in errors[1:]) or None)


@dataclass
class Playbook:
    spec: PlaybookSpec
    path: Path
    sha256: str
    lines: dict[tuple, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def step_lists(self) -> dict[str, list[StepSpec]]:
        return {"steps": self.spec.steps, **{f"rollbacks.{k}": v for k, v in self.spec.rollbacks.items()}}


# -- YAML with line numbers --


class _TooBig(Exception):
    def __init__(self, what: str, mark):
        super().__init__(what)
        self.what = what
        self.line = (mark.line + 1) if mark is not None else 1


def _bounded_loader():
    """A SafeLoader that counts while it composes: nesting depth and expanded size (aliases included), alias
    references, and refuses an alias to a node that is still being composed (``&a [*a]``)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.depth = 0  # of the node being composed
            self.reach = 0  # deepest level reached under it, through aliases too
            self.nodes = 0  # nodes so far, each alias counting the nodes it stands for
            self.aliases = 0
            self.open: set[str] = set()  # anchors whose node is being composed
            self.sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height)

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise _TooBig(f"more than {MAX_ALIASES} aliases (a playbook's limit)", event.start_mark)
                if event.anchor in self.open:
                    raise _TooBig(f"recursive alias *{event.anchor}: it refers to a node that contains it",
                                  event.start_mark)
                node = super().compose_node(parent, index)  # an undefined alias is PyYAML's error
                size, height = self.sizes.get(event.anchor, (1, 1))
                self._count(size, self.depth + height, event.start_mark)
                return node
            anchor = getattr(event, "anchor", None)
            self.depth += 1
            self._count(1, self.depth, event.start_mark)
            before, outer = self.nodes, self.reach
            self.reach = self.depth
            if anchor:
                self.open.add(anchor)
            try:
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
                self.open.discard(anchor)
            if anchor:
                self.sizes[anchor] = (self.nodes - before, self.reach - self.depth)
            self.reach = max(outer, self.reach)
            return node

        def _count(self, nodes: int, depth: int, mark) -> None:
            self.nodes += nodes
            self.reach = max(self.reach, depth)
            if depth > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels (a playbook's limit)", mark)
            if self.nodes > MAX_NODES:
                raise _TooBig(f"more than {MAX_NODES} nodes, counting what aliases expand to (a playbook's limit)", mark)

    return BoundedLoader


def _compose(text: str, file: str) -> tuple[Any, dict[tuple, int]]:
    import yaml

    lines: dict[tuple, int] = {}
    try:
        loader = _bounded_loader()(text)  # the reader refuses control characters here
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(e.position, 0)) + 1
        char = chr(e.character) if isinstance(e.character, int) else e.character
        raise PlaybookInvalid([Located(file, line, "yaml", f"unacceptable character {char!r} "
                                                           "(control characters are not allowed)")]) from None
    try:
        node = loader.get_single_node()
    except _TooBig as e:
        loader.dispose()
        raise PlaybookInvalid([Located(file, e.line, "yaml", e.what)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PlaybookInvalid([Located(file, (mark.line + 1) if mark else 1, "yaml", str(e.problem or e))]) from None
    except yaml.YAMLError as e:
        raise PlaybookInvalid([Located(file, 1, "yaml", str(e))]) from None

    def build(n, path: tuple) -> Any:
        if isinstance(n, yaml.MappingNode):
            out: dict = {}
            for k, v in n.value:
                key = loader.construct_object(k, deep=True) if isinstance(k, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    raise PlaybookInvalid([Located(file, k.start_mark.line + 1, _field(path), "keys must be names")])
                if key in out:
                    raise PlaybookInvalid([Located(file, k.start_mark.line + 1, _field((*path, key)),
                                                   "duplicate key")])
                lines[(*path, key)] = k.start_mark.line + 1
                out[key] = build(v, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            items = []
            for i, v in enumerate(n.value):
                lines[(*path, i)] = v.start_mark.line + 1
                items.append(build(v, (*path, i)))
            return items
        return loader.construct_object(n, deep=True)

    try:
        data = None if node is None else build(node, ())
    except yaml.MarkedYAMLError as e:  # a scalar the safe constructor refuses (!!python/..., a bad !!binary, ...)
        mark = e.problem_mark or e.context_mark
        raise PlaybookInvalid([Located(file, (mark.line + 1) if mark else 1, "yaml", str(e.problem or e))]) from None
    except (yaml.YAMLError, ValueError, OverflowError) as e:  # e.g. an impossible !!timestamp
        raise PlaybookInvalid([Located(file, 1, "yaml", f"{type(e).__name__}: {e}")]) from None
    finally:
        loader.dispose()
    return data, lines


def _field(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _line(lines: dict[tuple, int], path: tuple) -> int:
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return 1


# -- loading and checking --


def load(path: Path, display: str | None = None) -> Playbook:
    file = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{file}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise PlaybookInvalid([Located(file, 1, "yaml", f"document too large: {len(raw)} bytes, more than the "
                                                        f"{MAX_BYTES} bytes a playbook may have")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlaybookInvalid([Located(file, 1, "yaml", "not UTF-8 text")]) from None
    data, lines = _compose(text, file)
    if not isinstance(data, dict):
        raise PlaybookInvalid([Located(file, 1, "(top level)", "a playbook is a mapping with name and steps")])
    errs = [Located(file, _line(lines, loc), _field(loc), msg) for loc, msg in _shorthands(data)]
    if errs:
        raise PlaybookInvalid(errs)
    try:
        spec = convert(data, PlaybookSpec, strict=True)
    except ValidationError as e:
        loc, msg = located(e, PlaybookSpec, data, strict=True)
        if msg == "unknown key":
            msg = "unknown field"
        elif msg == "required":
            msg = "required field missing"
        raise PlaybookInvalid([Located(file, _line(lines, loc), _field(loc), msg)]) from None
    book = Playbook(spec, path, hashlib.sha256(raw).hexdigest(), lines)
    problems = check(book, file)
    if problems:
        raise PlaybookInvalid(problems)
    return book


def check(book: Playbook, file: str) -> list[Located]:
    """Semantic checks: unique ids, known actions and parameters, literal parameter types, on_failure targets,
    expressions that parse and name declared variables and known steps."""
    spec, lines = book.spec, book.lines
    errs: list[Located] = []

    def err(path: tuple, msg: str) -> None:
        errs.append(Located(file, _line(lines, path), _field(path), msg))

    main_ids = [s.id for s in spec.steps]
    seen: dict[str, tuple] = {}
    for lname, steps in book.step_lists().items():
        base = tuple(lname.split("."))
        for i, step in enumerate(steps):
            if step.id in seen:
                err((*base, i, "id"), f"duplicate step id {step.id!r}")
            seen[step.id] = (*base, i)
    for lname, steps in book.step_lists().items():
        base = tuple(lname.split("."))
        is_main = lname == "steps"
        for i, step in enumerate(steps):
            at = (*base, i)
            act = REGISTRY.get(step.action)
            if act is None:
                err((*at, "action"), f"unknown action {step.action!r}; known: {', '.join(sorted(REGISTRY))}")
            else:
                for pname, value in step.params.items():
                    p = act.params.get(pname)
                    if p is None:
                        known = ", ".join(sorted(act.params)) or "none"
                        err((*at, "with", pname), f"unknown parameter of {step.action} (known: {known})")
                    elif not expr.has_template(value):
                        try:
                            convert(value, p.type | None, strict=True)
                        except ValidationError as e:
                            err((*at, "with", pname),
                                f"expected {p.type.__name__}: {located(e, p.type | None, value, strict=True)[1]}")
                for pname, p in act.params.items():
                    if p.required and pname not in step.params:
                        err((*at, "with"), f"{step.action} needs parameter {pname!r}")
            allowed = {ABORT, CONTINUE} | (set(spec.rollbacks) if is_main else set())
            if step.on_failure not in allowed:
                where = "a rollback list" if is_main else "a rollback step (abort or continue only)"
                err((*at, "on_failure"), f"{step.on_failure!r} is not abort, continue or {where}"
                    + (f"; rollback lists: {', '.join(spec.rollbacks) or 'none'}" if is_main else ""))
            # expressions: a main step sees the steps before it; a rollback step sees every main step
            visible = set(main_ids[:i]) if is_main else set(main_ids) | {s.id for s in steps[:i]}
            exprs: list[tuple[tuple, expr.Expr]] = []
            if step.when is not None:
                try:
                    exprs.append(((*at, "when"), expr.parse(step.when)))
                except expr.ExprError as e:
                    err((*at, "when"), str(e))
            for pname, value in step.params.items():
                try:
                    exprs += [((*at, "with", pname), x) for x in expr.template_exprs(value)]
                except expr.ExprError as e:
                    err((*at, "with", pname), str(e))
            for path, x in exprs:
                for ref in x.paths():
                    root = ref[0]
                    if root not in expr.ROOTS:
                        err(path, f"unknown name {root!r} (use {', '.join(expr.ROOTS)})")
                    elif root == "vars" and (len(ref) < 2 or ref[1] not in spec.vars):
                        err(path, f"undeclared variable {'.'.join(map(str, ref[1:2])) or '(none)'!r}; declare it "
                                  "under vars:")
                    elif root == "steps" and (len(ref) < 2 or ref[1] not in visible):
                        name = ref[1] if len(ref) > 1 else ""
                        why = "a later step" if name in seen else "no such step"
                        err(path, f"steps.{name} is {why}; a step can only read steps that ran before it")
                    elif root == "failure" and is_main:
                        err(path, "failure.* is only defined in rollback steps")
    return errs


def coerce_var(name: str, spec: VarSpec, raw: str) -> Any:
    """A value from --var or the environment, typed like the variable's default."""
    d = spec.default
    if isinstance(d, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"variable {name} is a boolean: {raw!r} is not true or false")
    if isinstance(d, int):
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"variable {name} is an integer: {raw!r}") from None
    if isinstance(d, float):
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"variable {name} is a number: {raw!r}") from None
    return raw


def env_var_name(playbook_var: str) -> str:
    return f"AIXSSS_VAR_{playbook_var.upper()}"


def resolve_vars(book: Playbook, cli: dict[str, str], environ: dict[str, str]) -> dict[str, Any]:
    """--var k=v, then $AIXSSS_VAR_<K>, then the default; undeclared or missing required variables are errors."""
    spec = book.spec
    unknown = sorted(set(cli) - set(spec.vars))
    if unknown:
        raise UsageError(f"{book.name} declares no variable {', '.join(unknown)}",
                         hint=f"its variables: {', '.join(spec.vars) or 'none'}")
    out: dict[str, Any] = {}
    for name, v in spec.vars.items():
        if name in cli:
            out[name] = coerce_var(name, v, cli[name])
        elif env_var_name(name) in environ:
            out[name] = coerce_var(name, v, environ[env_var_name(name)])
        elif v.required:
            raise UsageError(f"{book.name} needs variable {name}: pass --var {name}=VALUE or set {env_var_name(name)}")
        else:
            out[name] = v.default
    return out
