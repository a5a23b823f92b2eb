"""``poll_until``: the one deadline loop (wait for a condition, checking every ``interval`` seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(check: Callable[[], T], timeout: float, interval: float = 0.1) -> T | None:
    """Call ``check`` until it returns something truthy (returned) or ``timeout`` seconds have passed (None).

    ``check`` runs at least once, and once more at the deadline, so a condition met just in time is seen.
    An exception from ``check`` ends the wait (raise one to fail early)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(interval, left))
