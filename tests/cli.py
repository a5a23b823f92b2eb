"""Running the real CLI as a subprocess, as users and CI do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "aixsss-ops")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, config: Path | None = None, env: dict | None = None, timeout: float = 300) -> Result:
    e = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    e["NO_COLOR"] = "1"
    e.update(env or {})
    argv = [EXE, *(["--config", str(config)] if config else []), *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=str(REPO))
    return Result(p.returncode, p.stdout, p.stderr)
