"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from aixsss_ops import poll


class FakeClock:
    """``time`` as ``poll_until`` uses it: ``sleep`` advances ``monotonic`` instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The waits of ``poll_until`` on a fake clock: a long timeout ends at once."""
    fake = FakeClock()
    monkeypatch.setattr(poll, "time", fake)
    return fake
