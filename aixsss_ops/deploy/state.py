"""What each color runs and which one is live (``deploy/colors.json``), and the release history.

Both files are written atomically. The proxy's rendered config is the truth of which color takes
traffic; ``colors.json`` records what was intended, so ``status`` can show a disagreement after a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops.fsutil import atomic_write_json, read_json

HISTORY_LIMIT = 200


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


class DeployState:
    def __init__(self, directory: Path):
        self.dir = directory
        self.colors_file = directory / "colors.json"
        self.history_file = directory / "history.json"

    def load(self) -> dict | None:
        return read_json(self.colors_file)

    def save(self, state: dict) -> None:
        atomic_write_json(self.colors_file, state)

    def history(self) -> list[dict]:
        return read_json(self.history_file, []) or []

    def record(self, entry: dict) -> None:
        hist = self.history()
        hist.append(entry)
        atomic_write_json(self.history_file, hist[-HISTORY_LIMIT:])
