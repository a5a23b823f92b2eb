"""apply_restore on a real versioned bucket: the keys added after the instant go behind delete markers, sent as
DeleteObjects requests spread over the workers, beside the version copies; no version is ever deleted."""

import io
import time

import pytest

from aixsss_ops.backup import objects
from aixsss_ops.backup.manifest import utcnow
from aixsss_ops.errors import OpsError


def _put(c, bucket: str, key: str, body: bytes) -> None:
    c.put_object(bucket, key, io.BytesIO(body), len(body))


def _versions(c, bucket: str) -> dict[str, list]:
    return objects.by_key(objects.all_versions(c, bucket))


def test_a_rewind_hides_the_new_keys_in_batches_and_copies_back_the_changed_ones(s3_server, monkeypatch):
    name = s3_server.new_bucket(versioned=True)
    c = s3_server.target().client()
    old = [f"artifacts/{i:03d}.json" for i in range(20)]
    for k in old:
        _put(c, name, k, b"at T " + k.encode())
    time.sleep(1.1)
    at = utcnow()
    time.sleep(1.1)
    added = [f"artifacts/new-{i:03d}.json" for i in range(37)]
    for k in added:
        _put(c, name, k, b"after T")
    for k in old[:3]:
        _put(c, name, k, b"overwritten")
    c.remove_object(name, old[3])
    before = _versions(c, name)

    monkeypatch.setattr(objects, "HIDE_BATCH", 5)  # 37 keys over 4 workers: 10 per request capped at 5 -> 8 requests
    sent: list[int] = []
    real = type(c).remove_objects

    def counting(self, bucket, delete_object_list, **kw):
        batch = list(delete_object_list)
        sent.append(len(batch))
        return real(self, bucket, batch, **kw)

    monkeypatch.setattr(type(c), "remove_objects", counting)
    done: list[int] = []
    snap, plan = objects.rewind_plan(s3_server.target(), name, at)
    assert sorted(plan.hide) == added and len(plan.copy) == 4
    res = objects.apply_restore(s3_server.target(), plan, jobs=4, on_done=done.append)

    assert res == {"copied": 4, "delete_markers": 37, "unchanged": 16}
    assert sorted(sent) == [2] + [5] * 7 and sum(done) == 37 + 4
    after = _versions(c, name)
    for k in added:
        assert after[k][0].delete_marker and len(after[k]) == 2  # the marker on top of the kept version
    for k in old:
        assert c.get_object(name, k).read() == b"at T " + k.encode()
    kept = {(k, v.version_id) for k, vs in before.items() for v in vs}
    assert kept <= {(k, v.version_id) for k, vs in after.items() for v in vs}  # nothing deleted
    assert objects.plan_restore(s3_server.target(), snap.__dict__).unchanged == len(old)


def test_a_failed_delete_request_names_each_of_its_keys(s3_server):
    name = s3_server.new_bucket(versioned=True)
    plan = objects.ObjectPlan(name + "-gone", hide=["a", "b", "c"])
    with pytest.raises(OpsError) as e:
        objects.apply_restore(s3_server.target(), plan, jobs=2)
    assert "3 of 3 operation(s) failed" in str(e.value)
    assert {line.split(":")[0] for line in e.value.details.splitlines()} == {"a", "b", "c"}
