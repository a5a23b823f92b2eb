"""Pure logic of the queue inspector: BullMQ 5 count semantics, layout detection, parsing, checks, metrics."""

import re
from pathlib import Path

import pytest

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import UsageError
from aixsss_ops.queue.checks import (
    check_failed_rising,
    check_maxmemory_policy,
    check_oldest_waiting,
    check_persistence,
    check_queue_name_match,
    check_workers_present,
)
from aixsss_ops.queue.conn import target
from aixsss_ops.queue.control import parse_duration
from aixsss_ops.queue.inspect import QueueStats, detect_layout, job_counts, list_count
from aixsss_ops.queue.keys import JOB_COUNT_TYPES, QueueKeys
from aixsss_ops.queue.metrics import render
from aixsss_ops.queue.workers import match_workers, parse_client_list


def counts(**kw):
    base = dict(paused_flag=False, wait_len=0, wait_tail=None, paused_len=0, paused_tail=None, active=0,
                prioritized=0, delayed=0, waiting_children=0, completed=0, failed=0)
    base.update(kw)
    return job_counts(**base)


def test_counts_have_bullmq5_getjobcounts_keys():
    assert tuple(counts()) == JOB_COUNT_TYPES == (
        "active", "completed", "delayed", "failed", "paused", "prioritized", "waiting", "waiting-children")


def test_pause_in_6x_layout_counts_wait_as_paused():
    c = counts(paused_flag=True, wait_len=7, wait_tail="7")
    assert c["paused"] == 7 and c["waiting"] == 0


def test_pause_in_5x_layout_counts_paused_list():
    c = counts(paused_flag=True, paused_len=4, paused_tail="1")
    assert c["paused"] == 4 and c["waiting"] == 0
    assert counts(wait_len=3, wait_tail="9")["waiting"] == 3


def test_legacy_marker_is_not_a_job():
    assert list_count(5, "0:1234") == 4
    assert list_count(1, "0:1234") == 0
    assert list_count(5, "17") == 5
    assert counts(wait_len=3, wait_tail="0:0")["waiting"] == 2


@pytest.mark.parametrize("version,flag,wait,paused,layout", [
    ("bullmq:5.81.5", False, 0, 0, "5.x"),
    ("bullmq:6.0.0", True, 0, 0, "6.x"),
    (None, True, 0, 3, "5.x"),
    (None, True, 3, 0, "6.x"),
    (None, False, 3, 0, "unknown"),
])
def test_detect_layout(version, flag, wait, paused, layout):
    assert detect_layout(version, flag, wait, paused)[0] == layout


def test_keys_follow_bullmq_layout():
    k = QueueKeys("ai-jobs")
    assert k.wait == "bull:ai-jobs:wait"
    assert k.waiting_children == "bull:ai-jobs:waiting-children"
    assert k.job("42") == "bull:ai-jobs:42"
    assert k.client_names() == ("bull:YWktam9icw==", "bull:ai-jobs")


def test_match_workers_like_bullmq_getworkers():
    text = (
        "id=1 addr=10.0.0.1:5000 name=bull:YWktam9icw== age=10 idle=2 cmd=bzpopmin\n"
        "id=2 addr=10.0.0.2:5001 name=bull:YWktam9icw==:w:gpu-1 age=11 idle=0 cmd=evalsha\n"
        "id=3 addr=10.0.0.3:5002 name=bull:ai-jobs age=3 idle=1 cmd=bzpopmin\n"
        "id=4 addr=10.0.0.4:5003 name=bull:YWktam9icw==:qe age=3 idle=1 cmd=xread\n"
        "id=5 addr=10.0.0.5:5004 name=bull:other age=3 idle=1 cmd=ping\n"
        "id=6 addr=10.0.0.6:5005 name= age=3 idle=1 cmd=client\n"
    )
    ws = match_workers(parse_client_list(text), "ai-jobs")
    assert [(w.id, w.name, w.flavor) for w in ws] == [("1", None, "node"), ("2", "gpu-1", "node"), ("3", None, "python")]
    assert ws[1].addr == "10.0.0.2:5001" and ws[1].idle_s == 0 and ws[0].age_s == 10


@pytest.mark.parametrize("text,seconds", [
    ("90", 90), ("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), ("1h30m", 5400), ("2w", 1209600),
    ("500ms", 0.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "7x", "1h x", "-5m", "h"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def _cfg(tmp_path: Path) -> OpsConfig:
    cfg = OpsConfig(state_dir=tmp_path / "state")
    (tmp_path / "state" / "env").mkdir(parents=True)
    return cfg


def test_target_masks_password(tmp_path):
    dep = Deployment(_cfg(tmp_path), environ={}, flags={"REDIS_URL": "redis://:hunter22@h:1", "AI_QUEUE_NAME": "q"})
    t = target(dep)
    assert t.redis_url == "redis://:hunter22@h:1" and t.redis_url_source == "--redis-url"
    assert "hunter22" not in str(t.to_dict())


def stats_with(**kw) -> QueueStats:
    c = dict.fromkeys(JOB_COUNT_TYPES, 0)
    c.update(kw.pop("counts", {}))
    return QueueStats(queue="q", prefix="bull", exists=True, paused=kw.pop("paused", False), layout="5.x",
                      layout_evidence="", counts=c, **kw)


def test_checks():
    assert check_maxmemory_policy("noeviction").status == "ok"
    f = check_maxmemory_policy("allkeys-lru")
    assert f.status == "fail" and "noeviction" in f.fix
    assert check_maxmemory_policy(None).status == "warn"
    assert check_persistence("no", "").status == "warn"
    assert check_persistence("yes", "").status == "ok"
    assert check_persistence("no", "3600 1").status == "ok"
    assert check_queue_name_match({"api": {"AI_QUEUE_NAME": "a"}, "worker": {"AI_QUEUE_NAME": "b"}}).status == "fail"
    assert check_queue_name_match({"api": {}, "worker": {"AI_QUEUE_NAME": "ai-jobs"}}).status == "ok"
    assert check_queue_name_match({"api": {}}).status == "warn"
    assert check_workers_present(stats_with(counts={"waiting": 2}), 0).status == "fail"
    assert check_workers_present(stats_with(delayed_past_due=1), 0).status == "fail"
    assert check_workers_present(stats_with(counts={"paused": 2}, paused=True), 0).status == "warn"
    assert check_workers_present(stats_with(counts={"waiting": 2}), 1).status == "ok"
    assert check_oldest_waiting(stats_with(oldest_waiting_age_s=900, oldest_waiting_job="7"), 300).status == "warn"
    assert check_oldest_waiting(stats_with(oldest_waiting_age_s=10, oldest_waiting_job="7"), 300).status == "ok"
    assert check_oldest_waiting(stats_with(), 300).status == "ok"
    assert check_failed_rising(stats_with(failed_last_15m=9, failed_prev_15m=2)).status == "warn"
    assert check_failed_rising(stats_with(failed_last_15m=9, failed_prev_15m=12)).status == "ok"
    assert check_failed_rising(stats_with(failed_last_15m=2, failed_prev_15m=0)).status == "ok"


def test_prometheus_text():
    text = render(stats_with(counts={"waiting": 3, "failed": 1}, oldest_waiting_age_s=1.5, failure_rate=0.25), n_workers=2)
    lines = text.splitlines()
    assert 'aixsss_queue_jobs{queue="q",state="waiting"} 3' in lines
    assert 'aixsss_queue_jobs{queue="q",state="waiting-children"} 0' in lines
    assert 'aixsss_queue_oldest_waiting_age_seconds{queue="q"} 1.5' in lines
    assert 'aixsss_queue_workers{queue="q"} 2' in lines
    assert "# TYPE aixsss_queue_jobs gauge" in lines
    assert text.endswith("\n")
    # every sample line is name{labels} value
    for line in lines:
        assert line.startswith("#") or re.fullmatch(r'[a-z_0-9]+\{[^}]*\} -?[0-9.e+-]+', line), line


def test_prometheus_escapes_label_values():
    s = stats_with()
    s.queue = 'we"ird\\q'
    assert 'queue="we\\"ird\\\\q"' in render(s)
