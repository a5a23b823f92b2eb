"""Batches of a re-encryption written while the check that precedes it still runs, and left uncommitted.

Each writer connection ("lane") takes every other batch of the check's memo, in one open transaction: its
compare-and-set UPDATEs take the row locks as they would in the pass, but nothing is visible to anyone else until
``commit``, which the pass calls once the check has passed. A check that fails, an interrupted run or a killed
process rolls every lane back, so a failed check still leaves the table as it was. A lane whose write failed (a lock
wait, a lost connection) is rolled back at ``commit`` and its batches are left to the pass, which writes them again
the ordinary way and reports their errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from aixsss_ops.keys.model import Chunk

Write = Callable[..., str | None]  # (connection, chunk, check, commit=False) -> the batch's xid, None if no row


class Staging:
    """Writes handed-in batches on ``conns`` (one thread each), uncommitted, until ``commit`` or ``rollback``."""

    def __init__(self, conns: list, write: Write):
        self.conns = conns
        self._write = write
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"keys-stage-{i}") for i in range(len(conns))]
        self._staged: list[tuple[Chunk, int, Future]] = []  # (batch, lane, write) in the order handed in

    def add(self, c: Chunk, check: Future | None = None) -> None:
        """Writes ``c`` next on its lane; ``check``: the opening of its new values with the target key, which the write
        waits for (``Engine._write``)."""
        lane = len(self._staged) % len(self.conns)
        self._staged.append((c, lane, self._lanes[lane].submit(self._write, self.conns[lane], c, check, commit=False)))

    def _stop(self) -> None:
        for _c, _lane, f in self._staged:
            f.cancel()
        for ex in self._lanes:
            ex.shutdown(wait=True)  # no transaction ends under a running write
        self._staged = []

    def commit(self) -> list[tuple[Chunk, str | None]]:
        """Commits each lane whose writes all succeeded, rolls the others back; (batch, xid) of every batch now
        committed, in the order handed in."""
        staged = list(self._staged)
        done: dict[int, str | None] = {}
        for lane, conn in enumerate(self.conns):
            mine = [(c, f) for c, n, f in staged if n == lane]
            try:
                xids = [f.result() for _c, f in mine]
                conn.commit()
            except Exception:  # noqa: BLE001 - the pass writes these batches again and reports what fails then
                with contextlib.suppress(Exception):
                    conn.rollback()
                continue
            done.update({id(c): x for (c, _f), x in zip(mine, xids, strict=True)})
        self._stop()
        return [(c, done[id(c)]) for c, _n, _f in staged if id(c) in done]

    def rollback(self) -> None:
        """Ends every lane's transaction unwritten; the connections stay open for the pass."""
        self._stop()
        for conn in self.conns:
            with contextlib.suppress(Exception):  # a broken connection has nothing left to roll back
                conn.rollback()
