"""A real 3-node Docker Swarm for the session (cluster.py): node1 the manager, node2 and node3 workers labelled
``aixsss.worker=true``. It is built once per session and torn down at its end; if it cannot start, the tests that
use it fail with the reason (nothing is skipped)."""

from __future__ import annotations

import pytest

from tests.integration.docker.swarm.cluster import Cluster, ensure_probe_image

WORKER_LABEL = ("aixsss.worker", "true")


@pytest.fixture(scope="session")
def swarm_cluster(docker_engine):
    """The session's :class:`Cluster` (3 nodes, formed, labelled). Tests that kill a node bring it back (or use
    ``swarm``, which heals the cluster before each test)."""
    cluster = Cluster(3, say=print)
    try:
        cluster.start()
        cluster.form(managers=1)
        for i in (2, 3):
            cluster.label(i, *WORKER_LABEL)
    except Exception as e:
        cluster.teardown()
        pytest.fail(f"the swarm test cluster did not start: {e}", pytrace=False)
    print(f"swarm cluster up: {cluster.timings}")
    yield cluster
    # the volumes (as big as the images the tests loaded) go away in the background
    print(f"swarm cluster teardown: {cluster.teardown(wait=False)}s")


@pytest.fixture
def swarm(swarm_cluster):
    """The session's cluster with every node running and ready before the test; the services, swarm networks,
    secrets and configs the test created are removed after it (and killed nodes started again)."""
    swarm_cluster.heal()
    before = swarm_cluster.swarm_objects()
    yield swarm_cluster
    swarm_cluster.heal()
    swarm_cluster.remove_swarm_objects(keep=before)


@pytest.fixture(scope="session")
def swarm_probe_image(swarm_cluster):
    """A 2 MB busybox image (sh, httpd, wget, nc) loaded into every node: its name."""
    name = ensure_probe_image(swarm_cluster.outer)
    swarm_cluster.load_image(name)
    return name
