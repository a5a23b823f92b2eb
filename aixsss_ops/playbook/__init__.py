"""Playbooks: YAML runbooks of aixsss-ops operations (see docs/playbooks.md)."""

from __future__ import annotations

from pathlib import Path

from aixsss_ops.errors import UsageError

# the bundled playbooks: inside the package when installed from a wheel, else the checkout's playbooks/
_PACKAGED = Path(__file__).resolve().parent / "bundled"
BUNDLED = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "playbooks"


def search_dirs(config_path: Path | None) -> list[Path]:
    dirs = [Path.cwd() / "playbooks"]
    if config_path is not None:
        dirs.insert(0, Path(config_path).resolve().parent / "playbooks")
    dirs.append(BUNDLED)
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in out:
            out.append(d.resolve())
    return out


def find(name: str, config_path: Path | None) -> Path:
    """A playbook by path (``./x.yml``) or by name (``release``: the first ``release.yml`` in the search dirs)."""
    p = Path(name).expanduser()
    if p.suffix in (".yml", ".yaml") or "/" in name:
        if not p.is_file():
            raise UsageError(f"no playbook file {name}")
        return p.resolve()
    dirs = search_dirs(config_path)
    for d in dirs:
        for ext in (".yml", ".yaml"):
            if (d / f"{name}{ext}").is_file():
                return d / f"{name}{ext}"
    raise UsageError(f"no playbook named {name!r}",
                     hint=f"looked in {', '.join(map(str, dirs))}; see `aixsss-ops play list`")


def available(config_path: Path | None) -> list[Path]:
    seen: dict[str, Path] = {}
    for d in search_dirs(config_path):
        if d.is_dir():
            for p in sorted([*d.glob("*.yml"), *d.glob("*.yaml")]):
                seen.setdefault(p.stem, p)
    return list(seen.values())
