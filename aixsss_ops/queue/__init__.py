"""BullMQ inspector and controls for the AIXSSS queue (BullMQ's own Redis layout, prefix ``bull``).

The public entry points other domains call (keys rotation, restore, deploy, doctor):

- :func:`aixsss_ops.queue.inspect.stats` — read-only counts equal to BullMQ 5's ``getJobCounts``
- :func:`aixsss_ops.queue.control.pause` / :func:`~aixsss_ops.queue.control.resume`
- :func:`aixsss_ops.queue.control.drain_wait`
- :func:`aixsss_ops.queue.checks.queue_findings`

This module imports nothing heavy so the CLI starts fast; import the submodules where needed.
"""
