"""``Stack.down`` reports what really stopped: a unit still running when the wait ends is not listed as stopped,
the later groups still go down, the engine that holds that unit is left up, and the run ends in one error
naming it.

The runtime is an in-memory double (the states it answers, the stops it was asked for) and the clock of the wait
is a fake one that advances when slept on, so the real wait (``supervisor.stop_timeout`` + 30 s) ends at once."""

from __future__ import annotations

import pytest

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import OpsError
from aixsss_ops.runtime.base import UnitStatus, unit_name
from aixsss_ops.stack.manager import Stack

RUNNING = [("worker", "blue"), ("api", "blue"), ("proxy", None), ("postgres", None), ("s3", None), ("redis", None)]


class MemoryRuntime:
    """Units that stop when asked, except those in ``stuck`` (they stay RUNNING whatever is asked)."""

    def __init__(self, running: list[tuple[str, str | None]], stuck: set[str] = frozenset()) -> None:
        self.states = {(s, c): "RUNNING" for s, c in running}
        self.stuck = stuck
        self.stops: list[str] = []

    def status(self) -> list[UnitStatus]:
        return [UnitStatus(unit_name(s, c), s, c, st) for (s, c), st in self.states.items()]

    def state(self, service: str, color: str | None = None) -> str:
        return self.states.get((service, color), "ABSENT")

    def stop(self, service: str, color: str | None = None, wait: bool = True) -> None:
        self.stops.append(unit_name(service, color))
        if unit_name(service, color) not in self.stuck:
            self.states[(service, color)] = "STOPPED"


class MemoryStack(Stack):
    def __init__(self, dep: Deployment, runtime: MemoryRuntime) -> None:
        super().__init__(dep)
        self.runtime = runtime
        self.engine_stopped = False

    def _engine_running(self) -> bool:
        return True

    def _engine_down(self) -> list[str]:
        self.engine_stopped = True
        return ["stopped supervisord"]


def make_stack(tmp_path, stuck: set[str] = frozenset()) -> MemoryStack:
    cfg = OpsConfig(state_dir=tmp_path / "state", supervisor={"stop_timeout": 40.0})
    return MemoryStack(Deployment(cfg, environ={}), MemoryRuntime(RUNNING, stuck))


def test_every_unit_stops_then_the_engine(tmp_path, clock):
    stack = make_stack(tmp_path)
    said: list[str] = []

    report = stack.down(progress=said.append)

    assert report.actions == [f"stopped {unit_name(s, c)}" for s, c in RUNNING] + ["stopped supervisord"]
    assert stack.engine_stopped
    assert said == [f"stopping {unit_name(s, c)}" for s, c in RUNNING]
    assert clock.now == 1000.0  # nothing was waited for: every unit stopped when asked


def test_a_unit_that_does_not_stop_is_not_reported_stopped_and_keeps_the_engine_up(tmp_path, clock):
    stack = make_stack(tmp_path, stuck={"api-blue"})
    said: list[str] = []

    with pytest.raises(OpsError) as raised:
        stack.down(progress=said.append)

    err = raised.value
    assert "api-blue" in err.message and "70s" in err.message  # the unit and the wait (stop_timeout 40 + 30)
    assert not any(u in err.message for u in ("worker-blue", "postgres", "redis", "proxy"))
    assert err.hint and "aixsss-ops stack status" in err.hint and "aixsss-ops stack down" in err.hint
    # the groups after the api's were still stopped, in order
    assert stack.runtime.stops == [unit_name(s, c) for s, c in RUNNING]
    assert all(st == "STOPPED" for (s, c), st in stack.runtime.states.items() if (s, c) != ("api", "blue"))
    assert not stack.engine_stopped  # it still holds api-blue
    # what did stop was said before the error; the stuck unit is not among it
    stopped = [line for line in said if not line.startswith("stopping ")]
    assert stopped, said
    told = " ".join(stopped)
    assert "api-blue" not in told
    for unit in ("worker-blue", "proxy", "postgres", "s3", "redis"):
        assert f"stopped {unit}" in told
    assert clock.now - 1000.0 >= 70.0  # the whole wait ran out before the api-blue was given up on


def test_stuck_units_of_several_groups_are_all_named(tmp_path, clock):
    stack = make_stack(tmp_path, stuck={"worker-blue", "redis"})

    with pytest.raises(OpsError) as raised:
        stack.down()

    assert "worker-blue" in raised.value.message and "redis" in raised.value.message
    assert "api-blue" not in raised.value.message
    assert stack.runtime.states[("api", "blue")] == "STOPPED" and stack.runtime.states[("postgres", None)] == "STOPPED"
    assert not stack.engine_stopped
