"""The version listing split by key prefix gives exactly what one listing of the whole bucket gives."""

import io

import pytest

from aixsss_ops.backup import objects

# "u/1/…" beside "u/1-old/…" and "a/…" beside "a-b", "a.c/…": folders that sort differently by name and by key,
# where SeaweedFS's paged version listings drop entries
KEYS = ["a", "a-b", "a/x", "a/b/c", "a/b/d", "a.c/y", "deep/1/2/3/4/5/k", "deep/1/2/3/4/5/l",
        "deep/1/other", "with space/ü ñ.png", "sym&<>'\"/k", "teams/t0/s/1.png", "teams/t1/s/2.png",
        *(f"u/{i}/f{j}" for i in range(4) for j in range(3)), *(f"u/{i}-old/f" for i in range(4))]


def _put(c, bucket: str, key: str, body: bytes) -> None:
    c.put_object(bucket, key, io.BytesIO(body), len(body))


@pytest.fixture
def bucket(s3_server):
    name = s3_server.new_bucket(versioned=True)
    c = s3_server.target().client()
    for i, k in enumerate(KEYS):
        _put(c, name, k, f"v1 {i}".encode())
    for k in ("a", "a/b/c", "deep/1/other", "teams/t0/s/1.png"):
        _put(c, name, k, b"v2 " + k.encode())
    for k in ("a-b", "a/b/d", "teams/t1/s/2.png"):
        c.remove_object(name, k)  # delete markers
    _put(c, name, "a-b", b"back after a delete")
    for i in range(40):
        _put(c, name, f"many/p{i:02d}/k", b"x")
    return name


def _one_listing(client, bucket: str) -> list:
    """The whole bucket in one listing, page after page (complete while it fits in one page)."""
    return [v for root in objects._pages(client, bucket, "") for v in objects._versions(root)]


def _as_listed(versions):
    per_key = objects.by_key(versions)
    return {k: [(v.version_id, v.delete_marker, v.etag, v.size, v.is_latest) for v in vs] for k, vs in per_key.items()}


class Spy:
    """The real client; records the query of every listing it sends."""

    def __init__(self, client):
        self.client, self.queries = client, []

    def _execute(self, method, bucket, **kw):
        self.queries.append(dict(kw.get("query_params") or {}))
        return self.client._execute(method, bucket, **kw)

    def __getattr__(self, name):
        return getattr(self.client, name)


def _whole_listings(spy: Spy) -> set[str]:
    """Prefixes whose versions are listed in one piece (no delimiter, not a one-key probe)."""
    return {q.get("prefix", "") for q in spy.queries
            if "versions" in q and "delimiter" not in q and q.get("max-keys") != "1"}


def test_prefix_listings_give_every_version_in_the_servers_order(s3_server, bucket):
    client = s3_server.target().client()
    whole = _one_listing(client, bucket)  # one page: complete
    assert len({v.key for v in whole}) == len(KEYS) + 40 and sum(v.delete_marker for v in whole) == 3
    spy = Spy(client)
    split = objects.all_versions(spy, bucket, jobs=4)
    assert _as_listed(split) == _as_listed(whole) and len(split) == len(whole)
    assert "many/p00/" in _whole_listings(spy) and "" not in _whole_listings(spy)


@pytest.mark.parametrize("page", [7, 2])
def test_prefixes_too_big_for_a_page_are_split_by_their_next_character(s3_server, bucket, monkeypatch, page):
    client = s3_server.target().client()
    whole = _one_listing(client, bucket)
    monkeypatch.setattr(objects, "PAGE", page)
    spy = Spy(client)
    split = objects.all_versions(spy, bucket, jobs=4)
    assert _as_listed(split) == _as_listed(whole) and len(split) == len(whole)
    # "many/p00/k" … "many/p39/k": split at "many/p", then at the next character again
    assert {"many/p00", "many/p17", "many/p39"} <= _whole_listings(spy)
    assert "" not in _whole_listings(spy)


@pytest.mark.parametrize("page", [1000, 7])
def test_a_level_over_the_listing_budget_is_listed_in_one_piece(s3_server, bucket, monkeypatch, page):
    client = s3_server.target().client()
    whole = _one_listing(client, bucket)
    monkeypatch.setattr(objects, "MAX_LISTINGS", 12)
    monkeypatch.setattr(objects, "PAGE", page)
    spy = Spy(client)
    split = objects.all_versions(spy, bucket, jobs=8)
    # with pages of 7 the prefixes listed in one piece take several pages, which the store pages wrongly: what
    # they miss is found by the current objects listed alongside
    assert _as_listed(split) == _as_listed(whole) and len(split) == len(whole)
    listed_whole = _whole_listings(spy)
    if page == 1000:  # "many/" has 40 sub-prefixes, more than the budget: listed as one prefix
        assert "many/" in listed_whole and not any(p.startswith("many/p") for p in listed_whole)
    assert len(listed_whole) <= 12


def test_snapshot_records_every_current_version_and_the_restore_plan_finds_nothing_to_do(s3_server, bucket):
    import time

    from aixsss_ops.backup.manifest import utcnow

    time.sleep(1.1)
    snap = objects.take_snapshot(s3_server.target(), bucket, utcnow())
    whole = _one_listing(s3_server.target().client(), bucket)
    current = {v.key: v for v in whole if v.is_latest and not v.delete_marker}
    assert {o["key"]: o["version_id"] for o in snap.objects} == {k: v.version_id for k, v in current.items()}
    plan = objects.plan_restore(s3_server.target(), snap.__dict__)
    assert plan.unchanged == len(current) and not plan.copy and not plan.hide and not plan.missing


def test_a_split_finds_the_keys_the_current_listing_omits(s3_server, monkeypatch):
    """The characters a prefix splits at come from the current keys, which omit keys whose newest version is a
    delete marker (deleted after the snapshot instant, they still belong in it): probes find them before the
    first character, after the last, in narrow gaps (one prefix per character) and in wide ones."""
    name = s3_server.new_bucket(versioned=True)
    c = s3_server.target().client()
    live = [f"flat/{a}{i}.png" for a in "acq" for i in range(10)]
    gone = ["flat/!0.png", "flat/b1.png", "flat/m5.png", "flat/zz.png", "flat/a", "flat/c5-old.png"]
    for k in live + gone:
        _put(c, name, k, k.encode())
    for k in gone:
        c.remove_object(name, k)
    whole = _one_listing(c, name)
    assert sum(v.delete_marker for v in whole) == len(gone)
    monkeypatch.setattr(objects, "PAGE", 8)
    spy = Spy(c)
    split = objects.all_versions(spy, name, jobs=4)
    assert _as_listed(split) == _as_listed(whole) and len(split) == len(whole)
    probes = [q for q in spy.queries if q.get("max-keys") == "1"]
    # "flat/b" is probed alone (a one-character gap); nothing is probed between adjacent characters
    assert any(q["prefix"] == "flat/b" and "key-marker" not in q for q in probes)
    assert not any(q.get("key-marker", "").startswith(("flat/a0", "flat/c3")) for q in probes)
    assert {"flat/a0", "flat/c5", "flat/m", "flat/z"} <= _whole_listings(spy)
