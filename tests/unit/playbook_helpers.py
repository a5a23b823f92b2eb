"""Actions for the runner's own tests: they touch only files, so the engine's semantics (when, on_failure,
timeouts, records, resume) are tested without a stack. Run as a script it runs or resumes a playbook."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from aixsss_ops.errors import CheckFailed
from aixsss_ops.playbook.actions import REGISTRY, Action, Param


def _mark(ctx, file: str, text: str = "x", sleep: float = 0.0, fail: bool = False) -> dict:
    with open(file, "a") as f:
        f.write(f"{ctx.step_id}:start\n")
    time.sleep(sleep)
    if fail:
        raise CheckFailed(f"{ctx.step_id} failed on purpose", hint="it is a test")
    with open(file, "a") as f:
        f.write(f"{ctx.step_id}:{text}\n")
    ctx.say(f"{ctx.step_id} wrote {text}")
    return {"text": text, "resumed": ctx.resumed}


def register() -> None:
    REGISTRY["test.mark"] = Action("test.mark", _mark, {
        "file": Param(str, required=True), "text": Param(str, "x"), "sleep": Param(float, 0.0), "fail": Param(bool, False),
    }, destructive=True, summary="append to a file")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


if __name__ == "__main__":  # python -m tests.unit.playbook_helpers CONFIG PLAYBOOK [RUN_ID]
    from aixsss_ops.config import load_config
    from aixsss_ops.playbook import model
    from aixsss_ops.playbook.runner import Runner, RunStore

    register()
    cfg = load_config(sys.argv[1])
    book = model.load(Path(sys.argv[2]))
    runner = Runner(cfg, book, RunStore(cfg.state))
    rec = runner.resume(sys.argv[3]) if len(sys.argv) > 3 else runner.start(model.resolve_vars(book, {}, {}))
    print(rec["id"], rec["status"])
