"""Readiness of the app's processes while the engine's own start check still runs (supervisord's STARTING: the
first second after the spawn). A process whose readiness proves it works (its log line, an HTTP answer, a Redis
client) is ready as soon as that proof is there; one that can only keep running is not ready before the engine says
RUNNING; and a STARTING process without its proof is not ready.

The runtime is an in-memory double (the states and logs it answers); the wait's clock is a fake one."""

from __future__ import annotations

import pytest

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.context.deploystate import Colors, ColorSpec
from aixsss_ops.errors import OpsError
from aixsss_ops.runtime import local_specs
from aixsss_ops.runtime.base import UnitStatus, unit_name
from aixsss_ops.stack.manager import Stack

READY_LINE = "worker consuming queue"


class MemoryRuntime:
    def __init__(self, states: dict[tuple[str, str | None], str], logs: dict[str, str]) -> None:
        self.states, self.log_text = states, logs

    descriptions: dict[str, str] = {}

    def status(self) -> list[UnitStatus]:
        return [UnitStatus(unit_name(s, c), s, c, st, uptime_s=0 if st == "RUNNING" else None,
                           description=self.descriptions.get(unit_name(s, c), ""))
                for (s, c), st in self.states.items()]

    def state(self, service: str, color: str | None = None) -> str:
        return self.states.get((service, color), "ABSENT")

    def logs_since_start(self, service: str, color: str | None = None) -> str:
        return self.log_text.get(unit_name(service, color), "")

    def logs(self, service: str, color: str | None = None, lines: int = 100) -> str:
        return self.logs_since_start(service, color)


class MemoryStack(Stack):
    def __init__(self, dep: Deployment, runtime: MemoryRuntime) -> None:
        super().__init__(dep)
        self.runtime = runtime

    def _engine_running(self) -> bool:
        return True

    def infra_defs(self):
        return []

    def colors(self, say=None) -> Colors:
        return Colors("blue", {"blue": ColorSpec("r1", str(self.layout.releases / "r1"), "v1")})

    def live_color(self) -> str:
        return "blue"

    def app_defs(self, color: str):
        return local_specs.app_processes(self.cfg, self.layout, color, self.colors().spec(color).path, "v1")


def make_stack(tmp_path, worker: str, mailer: str, log: str = "") -> MemoryStack:
    cfg = OpsConfig(state_dir=tmp_path / "state", supervisor={"start_timeout": 20.0},
                    app={"processes": {
                        "api": {"command": ["api"], "port_env": "PORT", "ready": {"http": "/api/health"}},
                        "worker": {"command": ["worker"], "ready": {"log": READY_LINE}},
                        "mailer": {"command": ["mailer"]},  # no proof: running for `seconds` is its readiness
                    }})
    rt = MemoryRuntime({("worker", "blue"): worker, ("mailer", "blue"): mailer}, {"worker-blue": log})
    return MemoryStack(Deployment(cfg, environ={}), rt)


def test_a_starting_process_whose_log_line_is_there_is_ready(tmp_path):
    stack = make_stack(tmp_path, "STARTING", "STARTING", log=f"boot\n{READY_LINE}\n")
    ok, detail = stack.ready("worker", "blue")
    assert ok and READY_LINE in detail


def test_a_starting_process_without_its_proof_yet_is_not_ready(tmp_path):
    stack = make_stack(tmp_path, "STARTING", "STARTING", log="boot\n")
    assert stack.ready("worker", "blue") == (False, f"no log line matches {READY_LINE!r} yet")


def test_a_process_that_can_only_keep_running_waits_for_the_engine_to_say_running(tmp_path):
    stack = make_stack(tmp_path, "STARTING", "STARTING")
    assert stack.ready("mailer", "blue") == (False, "starting")
    stack.runtime.states[("mailer", "blue")] = "BACKOFF"
    assert stack.ready("mailer", "blue") == (False, "backoff")


def test_wait_ready_returns_for_a_proven_starting_process_and_waits_out_an_unproven_one(tmp_path, clock):
    stack = make_stack(tmp_path, "STARTING", "STARTING", log=f"{READY_LINE}\n")
    worker, mailer = [d for d in stack.app_defs("blue") if d.service in ("worker", "mailer")]
    said: list[str] = []
    stack.wait_ready([worker], said.append)
    assert said == ["worker-blue is ready"] and clock.now == 1000.0  # at the first look, still STARTING
    with pytest.raises(OpsError, match="mailer-blue was not ready within 20s: starting"):
        stack.wait_ready([mailer], said.append)
    assert clock.now >= 1020.0


def test_status_reports_a_proven_starting_process_healthy_with_the_engines_state(tmp_path):
    stack = make_stack(tmp_path, "STARTING", "STARTING", log=f"{READY_LINE}\n")
    units = {s.unit: s for s in stack.status().services}
    assert units["worker-blue"].state == "STARTING" and units["worker-blue"].healthy
    assert units["mailer-blue"].state == "STARTING" and not units["mailer-blue"].healthy


def test_status_keeps_what_the_engine_says_of_a_starting_process_beside_its_probe(tmp_path):
    stack = make_stack(tmp_path, "STARTING", "STARTING", log="boot\n")
    stack.runtime.descriptions = {"mailer-blue": "non-zero exit (1); restarted"}
    units = {s.unit: s for s in stack.status().services}
    mailer = units["mailer-blue"]
    assert not mailer.healthy and mailer.detail == "starting; engine: non-zero exit (1); restarted"
    assert units["worker-blue"].detail == f"no log line matches {READY_LINE!r} yet"  # nothing said by the engine


def test_a_store_whose_container_is_not_there_yet_is_not_ready_rather_than_an_error():
    """The object store's volume probe runs in its container: on a swarm, the published port can answer before this
    node's task container is found. That is "not ready yet" (the wait goes on), not an error ending `stack up`."""
    from types import SimpleNamespace

    from aixsss_ops.stack.docker_stack import DockerStack

    def no_replica(service, argv, timeout=None):
        raise OpsError("no replica of s3 runs on this node (vm)")

    ok, detail = DockerStack._probe_s3_volumes(SimpleNamespace(runtime=SimpleNamespace(exec=no_replica)))
    assert not ok and detail == "no replica of s3 runs on this node (vm)"
