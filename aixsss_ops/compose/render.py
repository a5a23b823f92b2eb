"""compose/*.yml from ops.toml, written from the docker runtime's own container specs (runtime/docker_specs.py).

- ``infra.yml``: the network, the named volumes, postgres, redis and s3
- ``app.yml``: api and worker of one color: ``COLOR``, ``RELEASE``, ``VERSION`` and ``API_PORT`` are variables
- ``proxy.yml``: nginx, routing through the ``live`` symlink of the shared run volume (see runtime/docker.py)

Secrets are files under /run/secrets, as the runtime writes them, from compose's ``secrets:``: the infra ones from
the environment or a ``.env`` file (``POSTGRES_SUPERUSER_PASSWORD``, ``S3_ACCESS_KEY``, ``S3_SECRET_KEY``), the
app's from its env files; nothing secret is written here and no container gets a secret as environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import UsageError
from aixsss_ops.fsutil import atomic_write
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime.docker_engine import L_COLOR, L_PROJECT, L_RELEASE, L_SERVICE, L_VERSION

APP_VARS = ("COLOR", "RELEASE", "VERSION", "API_PORT")
_KEEP = re.compile(r"\$(\{(?:" + "|".join(APP_VARS) + r")(?::[?-][^}]*)?\})")
_RELEASE, _VERSION = "__RELEASE__", "__VERSION__"


class _Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)


def _escape(value: str, keep_vars: bool) -> str:
    """Compose interpolates ``$``: double every one, except our own ``${VAR}`` where ``keep_vars``."""
    escaped = value.replace("$", "$$")
    if keep_vars:
        escaped = re.sub(r"\$\$(\{[A-Z0-9_]+(?::[?-][^}]*)?\})", lambda m: "$" + m.group(1) if _KEEP.match("$" + m.group(1))
                         else m.group(0), escaped)
    return escaped


def _text(value: str, keep_vars: bool = True):
    v = _escape(value, keep_vars)
    return _Literal(v) if "\n" in v else v


def service(cfg: OpsConfig, spec: specs.ContainerSpec, compose_dir: Path) -> dict:
    svc: dict = {
        "image": spec.image,
        "container_name": specs.container_name(cfg, spec.unit),
        "hostname": spec.unit,
        "entrypoint": [],
        "command": [_text(a, keep_vars=False) for a in spec.command],
    }
    if spec.user:
        svc["user"] = spec.user
    if spec.working_dir:
        svc["working_dir"] = spec.working_dir
    if spec.secrets:
        svc["secrets"] = [_secret_ref(spec, target) for target in spec.secrets]
    if spec.environment:
        svc["environment"] = {k: _text(v) for k, v in spec.environment.items()}
    if spec.ports:
        svc["ports"] = [f"{ip}:{hp}:{cp}" for ip, hp, cp in spec.ports]
    if spec.volumes:
        svc["volumes"] = [f"{key}:{path}" for key, path in spec.volumes.items()]
    svc["networks"] = {"default": {"aliases": [spec.unit]}}
    if spec.healthcheck:
        svc["healthcheck"] = {
            "test": [_text(a, keep_vars=False) for a in spec.healthcheck],
            "interval": "5s", "timeout": "3s", "retries": 3, "start_period": "10s",
        }  # fmt: skip
    svc["restart"] = spec.restart
    if spec.memory:
        svc["mem_limit"] = spec.memory
    if spec.cpus:
        svc["cpus"] = spec.cpus
    svc["stop_signal"] = spec.stop_signal
    svc["stop_grace_period"] = f"{spec.stop_timeout}s"
    if spec.init:
        svc["init"] = True
    labels = {L_PROJECT: cfg.project, L_SERVICE: spec.service}
    if spec.color:
        labels[L_COLOR] = spec.color
    if spec.release:
        labels[L_RELEASE] = spec.release
        labels[L_VERSION] = spec.version or ""
    svc["labels"] = labels
    return svc


def secret_name(kind: str, name: str) -> str:
    return f"{name}_env" if kind == "env_file" else name.lower()


def _secret_ref(spec: specs.ContainerSpec, target: str) -> dict:
    ref: dict = {"source": secret_name(*spec.secrets[target]), "target": target}
    uid, _, gid = (spec.user or "").partition(":")
    if uid.isdigit():  # the runtime's files are 0400 and owned by the container's user; a named user is the image's
        ref |= {"uid": uid, "gid": gid or uid, "mode": 0o400}
    return ref


def secrets_section(cfg: OpsConfig, all_specs: list[specs.ContainerSpec], compose_dir: Path) -> dict:
    """Top-level ``secrets:``: the infra values from the environment, the app's env files as files."""
    layout = Layout(cfg.state)
    out: dict = {}
    for spec in all_specs:
        for kind, name in spec.secrets.values():
            src = ({"file": os.path.relpath(layout.env_file(name), compose_dir)} if kind == "env_file"
                   else {"environment": name})
            out[secret_name(kind, name)] = src
    return {"secrets": out} if out else {}


def _shared(cfg: OpsConfig, keys: list[str], external: bool) -> dict:
    net = specs.network_name(cfg)
    doc: dict = {"networks": {"default": {"name": net, **({"external": True} if external else {})}}}
    if keys:
        doc["volumes"] = {
            k: {"name": specs.volume_name(cfg, k), **({"external": True} if external else {})} for k in keys
        }
    return doc


def _app_vars(obj, color: str, port: int):
    """Turn the blue spec into the color-variable one."""
    if isinstance(obj, dict):
        return {k: _app_vars(v, color, port) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_app_vars(v, color, port) for v in obj]
    if isinstance(obj, str):
        cls = type(obj)
        s = obj.replace(_RELEASE, "${RELEASE:?}").replace(_VERSION, "${VERSION:?}")
        s = s.replace(f"-{color}", "-${COLOR:?}").replace(f":{port}:", ":${API_PORT:?}:")
        s = "${COLOR:?}" if s == color else s
        s = s[: -len(color)] + "${COLOR:?}" if s.endswith(f"={color}") else s  # envexec's --set APP_COLOR=blue
        return cls(s)
    return obj


def render_files(cfg: OpsConfig, compose_dir: Path | None = None) -> dict[str, str]:
    if cfg.backup.pitr:
        raise UsageError("compose render does not cover backup.pitr: the Postgres container's pgBackRest config (a "
                         "secret with a repository in a bucket) is written into it by the docker runtime",
                         hint="run the stack with runtime = \"docker\" (aixsss-ops stack up), or render with "
                              "backup.pitr off")
    compose_dir = compose_dir or cfg.base_dir / "compose"
    head = (
        "# rendered by 'aixsss-ops compose render' from ops.toml: edit ops.toml and render again.\n"
        "# The docker runtime creates the same containers from the same specs (aixsss_ops/runtime/docker_specs.py).\n"
        "# Secrets are files in /run/secrets, never container environment: POSTGRES_SUPERUSER_PASSWORD, REDIS_PASSWORD,\n"
        "# S3_ACCESS_KEY and S3_SECRET_KEY come from the environment or .env (REDIS_URL in the env files carries the same\n"
        "# Redis password), the app's from its env files (compose mounts a file secret\n"
        f"# as it is on the host: the app runs as uid {specs.APP_UID}, so give it read access to api.env and worker.env).\n"
    )
    infra = {n: s for n, s in ((s.service, s) for s in specs.infra(cfg))}
    files = {}
    backing = [infra[n] for n in ("postgres", "redis", "s3") if n in infra]  # external ones run elsewhere
    doc = {
        "name": cfg.project,
        "services": {s.service: service(cfg, s, compose_dir) for s in backing},
        **_shared(cfg, [*dict.fromkeys(k for s in backing for k in s.volumes), "run"], external=False),
        **secrets_section(cfg, backing, compose_dir),
    }
    files["infra.yml"] = head + "# up first: docker compose -f compose/infra.yml up -d\n" + _dump(doc)
    doc = {
        "name": cfg.project,
        "services": {"proxy": service(cfg, infra["proxy"], compose_dir)},
        **_shared(cfg, ["run"], external=True),
    }
    files["proxy.yml"] = head + "# docker compose -f compose/proxy.yml up -d (after infra.yml)\n" + _dump(doc)
    from aixsss_ops.runtime.docker_images import app_tag

    image = app_tag(cfg, _RELEASE)
    blue = specs.app_processes(cfg, "blue", _RELEASE, _VERSION, image)
    services = {s.service: _app_vars(service(cfg, s, compose_dir), "blue", cfg.ports.api_blue) for s in blue}
    doc = {"name": f"{cfg.project}-${{COLOR:?}}", "services": services, **_shared(cfg, ["run"], external=True),
           **secrets_section(cfg, blue, compose_dir)}
    files["app.yml"] = head + (
        "# one color per compose project, e.g.\n"
        f"#   COLOR=blue RELEASE=<release id> VERSION=<version> API_PORT={cfg.ports.api_blue} "
        "docker compose -f compose/app.yml up -d\n"
        "# then route the proxy: docker exec <project>-proxy sh -c 'ln -sfn colors/blue /run/aixsss/.live.tmp && "
        "mv -T /run/aixsss/.live.tmp /run/aixsss/live'\n"
    ) + _dump(doc)
    return files


def _dump(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=1000, default_flow_style=False, allow_unicode=True)


def stale(folder: Path, files: dict[str, str]) -> list[str]:
    return sorted(n for n, text in files.items() if not (folder / n).is_file() or (folder / n).read_text() != text)


def write(folder: Path, files: dict[str, str]) -> list[str]:
    changed = stale(folder, files)
    for name in changed:
        atomic_write(folder / name, files[name])
    return changed
