"""What each color runs and which one is meant to be live (``deploy/colors.json``), the release history, and the
app description each release was deployed with (``deploy/descriptions/<release>.json``).

Every file is written atomically. The proxy's ``live`` route (the runtime's ``routed_color``) decides which color
takes traffic; ``colors.json`` records what was intended, so ``deploy status`` can show a disagreement after a crash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops.errors import OpsError
from aixsss_ops.fsutil import atomic_write_json, read_json

HISTORY_LIMIT = 200
COLORS = ("blue", "green")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


@dataclass(frozen=True)
class ColorSpec:
    """The release one color runs, and how it stands: booting, live, warm (kept up for rollback) or failed."""

    release: str
    source: str
    version: str
    since: str = field(default_factory=now_iso)
    status: str | None = None
    warm_until: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.source)

    def with_status(self, status: str, warm_until: str | None = None) -> ColorSpec:
        return replace(self, status=status, warm_until=warm_until)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> ColorSpec:
        return cls(release=d["release"], source=d["source"], version=d["version"], since=d.get("since") or now_iso(),
                   status=d.get("status"), warm_until=d.get("warm_until"))


@dataclass
class Colors:
    """The intended live color and the release of each color that ever ran one."""

    active: str
    colors: dict[str, ColorSpec] = field(default_factory=dict)

    def spec(self, color: str | None) -> ColorSpec | None:
        return self.colors.get(color) if color else None

    def to_dict(self) -> dict:
        return {"active": self.active, "colors": {c: s.to_dict() for c, s in self.colors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Colors:
        return cls(d["active"], {c: ColorSpec.from_dict(s) for c, s in (d.get("colors") or {}).items()})


class DeployState:
    """The two files of ``<state>/deploy``."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.colors_file = directory / "colors.json"
        self.history_file = directory / "history.json"

    def load(self) -> Colors | None:
        """The saved state; None before the first deploy. An unreadable file is an OpsError naming it."""
        try:
            data = read_json(self.colors_file)
            if not data:
                return None
            state = Colors.from_dict(data)
            if state.active not in COLORS or set(state.colors) - set(COLORS) or state.active not in state.colors:
                raise ValueError("the live color or a color is not blue or green, or the live color has no release")
            return state
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise OpsError(f"the deploy state {self.colors_file} is unreadable or invalid: {type(e).__name__}: {e}",
                           hint="fix it (\"active\": blue or green; \"colors\": the release each one runs) or restore it; "
                                "'aixsss-ops deploy releases' lists what was deployed") from None

    def save(self, state: Colors) -> None:
        atomic_write_json(self.colors_file, state.to_dict())

    def history(self) -> list[dict]:
        return read_json(self.history_file, []) or []

    def record(self, entry: dict) -> None:
        hist = self.history()
        hist.append(entry)
        atomic_write_json(self.history_file, hist[-HISTORY_LIMIT:])

    def description_file(self, release_id: str) -> Path:
        return self.dir / "descriptions" / f"{release_id}.json"

    def save_description(self, release_id: str, description: dict) -> None:
        """The app description ``release_id`` was last deployed with (mode 0600: a process's env may hold a
        secret)."""
        atomic_write_json(self.description_file(release_id), description, mode=0o600)

    def description(self, release_id: str) -> dict | None:
        """The recorded app description of ``release_id``; None when there is none (a release deployed by an
        aixsss-ops that kept none). An unreadable file is an OpsError naming it."""
        path = self.description_file(release_id)
        try:
            data = read_json(path)
        except (OSError, ValueError) as e:
            raise OpsError(f"the app description of release {release_id} ({path}) is unreadable: "
                           f"{type(e).__name__}: {e}") from None
        if data is not None and not isinstance(data, dict):
            raise OpsError(f"the app description of release {release_id} ({path}) is not a JSON object")
        return data
