"""Where a service's environment comes from: env files (the stack's or given ones) and/or the process
environment laid over them, the way the services read it (dotenv never overrides a variable already set)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops import envfile
from aixsss_ops.envcheck.rules import SERVICES
from aixsss_ops.errors import UsageError
from aixsss_ops.findings import Finding
from aixsss_ops.output import secret_values  # noqa: F401 (re-exported for the env commands)


@dataclass
class Sources:
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    problems: list[Finding] = field(default_factory=list)  # unreadable, malformed or missing files


def parse_env_file_args(values: list[str], service: str) -> dict[str, Path]:
    """``--env-file`` values: ``SERVICE=PATH``, or a bare ``PATH`` when one ``--service`` is chosen."""
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name in SERVICES:
            out[name] = Path(path)
        elif service != "all":
            if service in out:
                raise UsageError(f"--env-file given twice for {service}")
            out[service] = Path(v)
        else:
            raise UsageError(f"--env-file {v}: say which service it is for (api=PATH, worker=PATH, web=PATH) "
                             "or choose one with --service")
    return out


def read_file(service: str, path: Path, problems: list[Finding]) -> dict[str, str] | None:
    try:
        return envfile.parse(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        problems.append(Finding("env.file", "fail", f"env file {path} does not exist",
                                "write the env files with `aixsss-ops env init` (or pass --env-file)", service))
    except OSError as e:
        problems.append(Finding("env.file", "fail", f"cannot read {path}: {e.strerror}",
                                f"check the permissions of {path}", service))
    except UnicodeDecodeError as e:  # never the bytes: they may be part of a secret
        problems.append(Finding("env.file", "fail", f"{path}: not UTF-8 text (at byte offset {e.start})",
                                "write the env file as UTF-8", service))
    except UsageError as e:  # names file:line (and the variable when the line starts with one), never the value
        problems.append(Finding("env.file", "fail", e.message, "fix that line: KEY=value, one per line",
                                service, _variable_of(e.message, path)))
    return None


def _variable_of(message: str, path: Path) -> str | None:
    try:
        n = int(message[len(str(path)) + 1:].split(":", 1)[0])
        line = path.read_text(encoding="utf-8").splitlines()[n - 1]
    except (ValueError, IndexError, OSError):
        return None
    import re

    m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)", line)
    return m.group(1) if m else None


def load(services: list[str], default_files: Mapping[str, Path], given: Mapping[str, Path],
         environ: Mapping[str, str] | None) -> Sources:
    """The environment of each service. Given files must exist; the default ones may be absent only when the
    process environment is used (``environ`` not None), which then overrides what the files say."""
    src = Sources()
    for svc in services:
        path = given.get(svc) or default_files.get(svc)
        env: dict[str, str] | None = None
        origins = []
        if path is not None and (svc in given or path.exists() or environ is None):
            env = read_file(svc, path, src.problems)
            if env is None:
                continue
            origins.append(str(path))
        if environ is not None:
            env = {**(env or {}), **environ}
            origins.append("the process environment")
        if env is not None:
            src.envs[svc] = env
            src.origins[svc] = " + ".join(origins)
    return src
