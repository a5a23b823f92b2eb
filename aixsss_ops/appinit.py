"""``app init --from PATH``: the ``[app]`` description of a pnpm/npm monorepo laid out like AIXSSS (apps/api,
apps/worker, apps/web, a Prisma migrations folder), read from its package files, as ops.toml text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops.errors import UsageError


@dataclass
class Detected:
    source: Path
    manager: str  # "pnpm" or "npm"
    build: list[list[str]] = field(default_factory=list)
    migrations: str | None = None
    web_root: str | None = None
    processes: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not readable JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _workspaces(root: Path, pkg: dict) -> list[Path]:
    globs: list[str] = []
    ws = root / "pnpm-workspace.yaml"
    if ws.exists():
        import yaml

        globs = list((yaml.safe_load(ws.read_text(encoding="utf-8")) or {}).get("packages") or [])
    elif isinstance(pkg.get("workspaces"), list):
        globs = pkg["workspaces"]
    elif isinstance(pkg.get("workspaces"), dict):
        globs = pkg["workspaces"].get("packages") or []
    found: list[Path] = []
    for g in globs:
        for d in sorted(root.glob(g.rstrip("/"))):
            if (d / "package.json").is_file() and d not in found:
                found.append(d)
    return found


def _node_command(pkg: dict, default: str) -> list[str]:
    """``node <entry>`` from the package's start script (``node dist/main.js``) or its ``main``."""
    start = (pkg.get("scripts") or {}).get("start:prod") or (pkg.get("scripts") or {}).get("start") or ""
    m = re.fullmatch(r"\s*node\s+(\S+)\s*", start)
    return ["node", m.group(1) if m else pkg.get("main") or default]


def detect(source: Path) -> Detected:
    root = source.resolve()
    pkg = _json(root / "package.json")
    if not pkg:
        raise UsageError(f"{source} has no package.json: not a pnpm/npm monorepo",
                         hint="point --from at the checkout's root folder")
    if (root / "pnpm-lock.yaml").exists():
        pm = str(pkg.get("packageManager") or "pnpm@9")
        version = pm.split("@", 1)[1].split("+", 1)[0] if pm.startswith("pnpm@") else "9"
        run = ["npx", "-y", f"pnpm@{version}"]
        d = Detected(root, "pnpm", [[*run, "install", "--frozen-lockfile"]])
    else:
        run = ["npm"]
        install = ["npm", "ci", "--no-audit", "--no-fund"] if (root / "package-lock.json").exists() else \
            ["npm", "install", "--no-audit", "--no-fund"]
        d = Detected(root, "npm", [install])
    spaces = _workspaces(root, pkg)
    if not spaces:
        raise UsageError(f"{source}: no workspaces (pnpm-workspace.yaml or package.json \"workspaces\")")
    by_name = {p.name: p for p in spaces}
    # libraries first, the web build last: the apps import the libraries' builds
    order = sorted(spaces, key=lambda p: (p.parent.name != "packages", p.name == "web", str(p)))
    for ws in order:
        if (_json(ws / "package.json").get("scripts") or {}).get("build"):
            rel = ws.relative_to(root).as_posix()
            d.build.append([*run, "-C", rel, "build"] if d.manager == "pnpm" else [*run, "run", "build", "-w", rel])
    prisma = sorted(p.parent for p in root.glob("apps/*/prisma/migrations/migration_lock.toml"))
    if prisma:
        d.migrations = prisma[0].relative_to(root).as_posix()
        if d.manager == "pnpm":
            d.build.insert(1, [*run, "-C", prisma[0].parent.parent.relative_to(root).as_posix(), "exec", "prisma",
                               "generate"])
            d.notes.append("prisma generate downloads Prisma's engines: offline, see docs/real-aixsss.md")
    else:
        d.notes.append("no Prisma migrations folder found (apps/*/prisma/migrations): set app.migrations")
    if "web" in by_name:
        d.web_root = (by_name["web"].relative_to(root) / "dist").as_posix()
    if "api" not in by_name:
        raise UsageError(f"{source}: no apps/api workspace: describe the processes in ops.toml by hand")
    d.processes["api"] = {"command": _node_command(_json(by_name["api"] / "package.json"), "dist/main.js"),
                          "cwd": by_name["api"].relative_to(root).as_posix(), "port_env": "PORT",
                          "env": {"NO_COLOR": "1"}, "ready": {"http": "/api/health", "json": {"ok": True}},
                          "stop_timeout": 10}
    if "worker" in by_name:
        d.processes["worker"] = {"command": _node_command(_json(by_name["worker"] / "package.json"), "dist/worker.js"),
                                 "cwd": by_name["worker"].relative_to(root).as_posix(), "env": {"NO_COLOR": "1"},
                                 "ready": {"log": r"\[worker\] ready"}, "stop_timeout": 130}
    return d


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def render(d: Detected, version: str = "1.0.0") -> str:
    """The ``[app]`` table and its process tables, with a comment on each key that needs an operator's look."""
    lines = ["[app]", f"source = {_toml(str(d.source))}", f"version = {_toml(version)}",
             f"# {d.manager} monorepo: install, then each workspace's build script (libraries first, web last)",
             "build = ["]
    lines += [f"  {{ run = {_toml(step)}, timeout = 900 }}," for step in d.build]
    lines.append("]")
    if d.migrations:
        lines.append(f"migrations = {_toml(d.migrations)}")
    if d.web_root:
        lines.append(f"web_root = {_toml(d.web_root)}")
    for note in d.notes:
        lines.append(f"# note: {note}")
    for role, spec in d.processes.items():
        lines += ["", f"[app.processes.{role}]"]
        if role == "worker":
            lines.append("# stop_timeout covers the longest job (AI_REQUEST_TIMEOUT_MS, 120 s); raise it to 1830 when "
                         "video jobs run (AI_VIDEO_TIMEOUT_MS, 30 min)")
        lines += [f"{k} = {_toml(v)}" for k, v in spec.items()]
    return "\n".join(lines) + "\n"


def write_into(config: Path, app_toml: str) -> None:
    """Replace the ``[app]`` table (and its ``[app.*]`` tables) of ``config`` with ``app_toml``, or append it."""
    from aixsss_ops.fsutil import atomic_write

    text = config.read_text(encoding="utf-8") if config.exists() else ""
    out, skipping = [], False
    for line in text.splitlines():
        header = re.match(r"\s*\[+\s*([A-Za-z0-9_.\-\"]+)\s*\]+", line)
        if header:
            skipping = header.group(1) == "app" or header.group(1).startswith("app.")
        if not skipping:
            out.append(line)
    body = "\n".join(out).rstrip()
    atomic_write(config, (body + "\n\n" if body else "") + app_toml)
