"""``stack up | down | status | logs`` on a Docker Swarm (``runtime = "swarm"``).

The services of runtime/swarm_specs.py on the project's overlay network: postgres, redis and s3 (those ops.toml
does not mark ``external``) pinned to the infra node with their volumes and their ports published there
(aixsss-ops reaches them at ``host`` as on the docker runtime, so migrations, backups, probes and the smoke test
are unchanged), the app's processes per color with their replicas, the proxy on every proxy node. App images
reach the nodes through the registry (``swarm.registry``); the infra and proxy run from the base and runtime
images, which must be on the nodes that run them (``images base`` on the infra node; the base image on every
proxy node). With ``backup.pitr`` the Postgres service is the docker runtime's container (pgBackRest in it, its
``<project>-pgbackrest`` volume on the infra node) and ``up`` creates the stanza as on docker.
"""

from __future__ import annotations

import re

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime import swarm_specs as sw
from aixsss_ops.runtime.swarm import SwarmRuntime
from aixsss_ops.stack.docker_stack import DockerStack
from aixsss_ops.stack.manager import Progress, Stack, StackReport


class SwarmStack(DockerStack):
    runtime: SwarmRuntime

    def __init__(self, dep: Deployment):
        Stack.__init__(self, dep)
        self.runtime = SwarmRuntime(self.cfg, self.layout)

    def infra_defs(self) -> list[specs.ContainerSpec]:
        return sw.infra(self.cfg)

    # -- up --
    def up(self, progress: Progress | None = None, infra_only: bool = False) -> StackReport:
        say = progress or (lambda _m: None)
        actions: list[str] = []
        rt, cfg = self.runtime, self.cfg
        rt.self_node()  # a clear error now when the engine is unreachable or no manager
        colors, infra = self._begin_up(say)
        done = rt.ensure_network()
        actions += [done] if done else []
        live = colors.spec(colors.active)
        say(f"app image of {live.release}")
        image = rt.ensure_app_image(live.path, live.version, say)

        by_service = {s.service: s for s in infra}
        backing = [by_service[n] for n in ("postgres", "redis", "s3") if n in by_service]  # not the external ones
        for spec in backing:
            actions += self._ensure_service(spec, 1, say)
        self.wait_ready(backing, say)
        if infra_only:
            return self.status(actions)
        actions += self._prepare_data(live, say)
        actions += self._archiving()  # backup.pitr: the stanza, pgBackRest exec'd in the Postgres replica
        if cfg.swarm.registry == "embedded":
            from aixsss_ops.runtime import swarm_registry

            say("registry")
            external = "s3" in cfg.external  # the replicas reach a managed store at its own address
            swarm_registry.ensure_registry(rt.client, cfg, say, s3=self.s3_target(),
                                           endpoint=self.s3_target().endpoint if external else swarm_registry.S3_ENDPOINT)
        rt.publish(image, say)

        app = self.app_defs(colors.active)
        for spec in app:
            actions += self._ensure_service(spec, sw.replicas(cfg, spec.service), say)
        self.wait_ready(app, say)
        actions += self._ensure_service(by_service["proxy"], 1, say)
        for color, cspec in colors.colors.items():
            if color == colors.active or rt.service_attrs("api", color) is not None:
                say(f"preparing {color} on the proxy nodes")
                rt.prepare_route(color, cspec.path)
        if self.live_color() is None or "created proxy" in actions or "recreated proxy" in actions:
            rt.route(colors.active)
            actions.append(f"routed the proxy to {colors.active}")
        self.wait_ready([by_service["proxy"]], say)
        rt.prune_secrets()
        return self.status(actions)

    def _ensure_service(self, spec: specs.ContainerSpec, count: int, say: Progress) -> list[str]:
        out = []
        action = self.runtime.ensure_service(spec, count)
        if action:
            say(f"{action} {spec.unit}")
            out.append(f"{action} {spec.unit}")
        if self.runtime.state(spec.service, spec.color) in ("STOPPED", "STOPPING"):
            say(f"starting {spec.unit}")
            self.runtime.start(spec.service, spec.color)
            out.append(f"started {spec.unit}")
        return out

    def _ports_on_this_host(self) -> bool:
        return False  # published on the nodes that run the services: Swarm reports a taken port

    def _absent_detail(self, state: str) -> str:
        return "no service (removed?): run 'stack up'" if state == "ABSENT" else ""

    # -- readiness: every replica --
    def ready(self, role: str, color: str) -> tuple[bool, str]:
        """Every replica of the process shows its readiness: an HTTP check passed by each one's health check (a
        task stays "starting" until then), or the log line in each one's log; otherwise as on one host."""
        from aixsss_ops import appspec

        spec = appspec.spec_of(self.cfg, role)
        if spec is None:
            return False, f"{role} is not a process of the app description"
        state = self.runtime.state(role, color)
        if state != "RUNNING":
            return False, state.lower()
        if spec.ready.http:
            n = sw.replicas(self.cfg, role)
            return True, f"{spec.ready.http}: {n}/{n} replicas passed their health check"
        if spec.ready.log:
            logs = self.runtime.replica_logs(role, color)
            want = sw.replicas(self.cfg, role)
            hits = [t for t, text in logs.items() if re.search(spec.ready.log, text, re.M)]
            if len(hits) >= want:
                return True, f"{len(hits)}/{want} replicas logged a line matching {spec.ready.log!r}"
            return False, f"{len(hits)}/{want} replicas logged a line matching {spec.ready.log!r}"
        return super().ready(role, color)

    def status(self, actions: list[str] | None = None) -> StackReport:
        from aixsss_ops.runtime.swarm_nodes import node_table

        report = super().status(actions)
        where = {u.unit: u.description for u in self.runtime.status()}
        for s in report.services:
            if s.state == "RUNNING" and where.get(s.unit):
                s.detail = f"{s.detail} [{where[s.unit]}]"
        report.nodes = node_table(self.runtime.client, self.cfg)
        return report
