"""`aixsss-ops keys` against real PostgreSQL and Redis: check, generate, rotate (full, --db-only, --rollback,
--dry-run), bad inputs, kills at random batch boundaries, tricky key strings, and no plaintext anywhere."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import time

import pytest
import redis

from aixsss_ops import crypto
from tests.cli import EXE, REPO, run_cli
from tests.integration.keys_helpers import all_secret_texts, deployment_with_key, insert_profiles
from tests.unit.test_crypto import node

OLD = crypto.generate_key()


@pytest.fixture
def dep(pg_server, redis_server, queue_name):
    return deployment_with_key(pg_server, redis_server, queue_name, OLD)


def fp(raw: str) -> str:
    return crypto.fingerprint(crypto.derive_key(raw))


def assert_no_secrets(text: str, plain: dict, *keys: str) -> None:
    leaked = [t for t in all_secret_texts(plain) if t in text] + [k for k in keys if k and k in text]
    assert not leaked, f"{len(leaked)} secret(s) in the output"


def queue_paused(dep) -> bool:
    r = redis.Redis.from_url(dep.redis_url, decode_responses=True)
    return r.hexists(f"bull:{dep.queue}:meta", "paused")


def whose(dep, *raws: str) -> dict[str, int]:
    """How many values each key opens; a value opened by two keys or none fails the test."""
    keys = [crypto.derive_key(r) for r in raws]
    counts = {r: 0 for r in raws}
    for rid, vals in dep.values().items():
        for col, v in zip(("api", "image", "video"), vals, strict=True):
            if v is None:
                continue
            ok = []
            for raw, k in zip(raws, keys, strict=True):
                try:
                    crypto.decrypt(v, k)
                    ok.append(raw)
                except crypto.CryptoError:
                    pass
            assert len(ok) == 1, f"{rid}.{col} opens with {len(ok)} of the keys"
            counts[ok[0]] += 1
    return counts


# -- generate -----------------------------------------------------------------------------------------------

def test_generate_prints_a_real_key_and_write_refuses_to_replace_one(dep):
    r = run_cli("keys", "generate", config=dep.cfg)
    assert r.code == 0, r.output
    key = r.stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32 and crypto.is_real_32_byte_key(key)
    assert fp(key) in r.stderr

    before = dep.env_file("api").read_bytes()
    r = run_cli("keys", "generate", "--write", config=dep.cfg)
    assert r.code == 3 and "keys rotate" in r.output
    assert dep.env_file("api").read_bytes() == before

    dep.write_env(None)
    r = run_cli("--json", "keys", "generate", "--write", config=dep.cfg)
    assert r.code == 0, r.output
    written = dep.env("api")["API_KEY_ENCRYPTION_KEY"]
    assert written == dep.env("worker")["API_KEY_ENCRYPTION_KEY"] and crypto.is_real_32_byte_key(written)
    assert r.json["key"] is None and r.json["fingerprint"] == fp(written) and written not in r.output
    for svc in ("api", "worker"):
        assert dep.env_file(svc).stat().st_mode & 0o777 == 0o600


# -- check --------------------------------------------------------------------------------------------------

def test_check_tells_whose_key_each_value_is_and_never_prints_plaintext(dep):
    other, stranger = crypto.generate_key(), crypto.generate_key()
    plain = insert_profiles(dep, OLD, 20)
    r = run_cli("--json", "keys", "check", config=dep.cfg)
    assert r.code == 0, r.output
    d = r.json
    assert d["ok"] and d["key_fingerprint"] == fp(OLD) and d["rows"] == 20
    assert d["decrypt_ok"] == d["values"] == 20 + 13 + 15 and d["nulls"] == 60 - d["values"]
    assert d["env_files"]["agree"] and d["env_files"]["fingerprints"] == {"api": fp(OLD), "worker": fp(OLD)}

    plain |= insert_profiles(dep, other, 3, start=100)
    plain |= insert_profiles(dep, stranger, 1, start=200)
    r = run_cli("--json", "keys", "check", "--other-key", other, config=dep.cfg)
    assert r.code == 3
    d = r.json
    by_fp = {f["fingerprint"]: f["values"] for f in d["fingerprints"]}
    assert by_fp == {fp(OLD): 48, fp(other): 3 + 2 + 2}
    assert d["other_key"] == 7 and d["undecryptable"] == 2  # p000200: api and image keys set, no video key
    assert any('id=p000200 column "apiKeyEncrypted"' in e for e in d["errors"])
    assert_no_secrets(r.output, plain, OLD, other, stranger)

    human = run_cli("keys", "check", "--other-key", other, config=dep.cfg)
    assert human.code == 3 and fp(other) in human.stdout and "p000200" in human.stdout
    assert_no_secrets(human.output, plain, OLD, other, stranger)


def test_check_fails_when_api_and_worker_disagree(dep):
    insert_profiles(dep, OLD, 2)
    other = crypto.generate_key()
    env = dep.env("worker")
    env["API_KEY_ENCRYPTION_KEY"] = other
    from aixsss_ops import envfile

    envfile.write(dep.env_file("worker"), env)
    r = run_cli("--json", "keys", "check", config=dep.cfg)
    assert r.code == 3
    assert r.json["env_files"] == {"fingerprints": {"api": fp(OLD), "worker": fp(other)}, "agree": False}
    assert other not in r.output and OLD not in r.output


# -- rotate ---------------------------------------------------------------------------------------------------

def test_dry_run_counts_and_changes_nothing(dep):
    insert_profiles(dep, OLD, 10)
    before = dep.values()
    r = run_cli("--json", "--yes", "keys", "rotate", "--generate", "--dry-run", config=dep.cfg)
    assert r.code == 0, r.output
    assert r.json["dry_run"] and r.json["check"]["by_key"] == [10 + 6 + 7, 0]
    assert any("re-encrypt 23 value(s)" in s for s in r.json["plan"])
    assert dep.values() == before and dep.env("api")["API_KEY_ENCRYPTION_KEY"] == OLD
    assert "API_KEY_ENCRYPTION_KEY_NEXT" not in dep.env("api") and not queue_paused(dep) and dep.progress() is None


def test_rotate_then_rollback_with_the_kept_previous_key(dep):
    plain = insert_profiles(dep, OLD, 50)
    r = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=dep.cfg)
    assert r.code == 0, r.output
    new = dep.env("api")["API_KEY_ENCRYPTION_KEY"]
    assert new != OLD and dep.env("worker")["API_KEY_ENCRYPTION_KEY"] == new
    assert dep.env("api")["API_KEY_ENCRYPTION_KEY_PREVIOUS"] == OLD == dep.env("worker")["API_KEY_ENCRYPTION_KEY_PREVIOUS"]
    assert "API_KEY_ENCRYPTION_KEY_NEXT" not in dep.env("api")
    res = r.json
    assert (res["phase"], res["old_fingerprint"], res["new_fingerprint"]) == ("done", fp(OLD), fp(new))
    assert res["reencrypted"] == res["verified"] == 50 + 33 + 37 and res["queue_resumed"] and not queue_paused(dep)
    assert dep.plaintexts(new) == plain
    assert_no_secrets(r.output + (dep.state / "keys" / "rotation.json").read_text(), plain, OLD, new)
    assert run_cli("keys", "check", config=dep.cfg).code == 0

    again = run_cli("--json", "--yes", "keys", "rotate", "--new-key", new, config=dep.cfg)
    assert again.code == 3 and "nothing to rotate" in again.output  # new == current

    back = run_cli("--json", "--yes", "keys", "rotate", "--rollback", config=dep.cfg)
    assert back.code == 0, back.output
    assert dep.env("api")["API_KEY_ENCRYPTION_KEY"] == OLD and dep.env("api")["API_KEY_ENCRYPTION_KEY_PREVIOUS"] == new
    assert dep.plaintexts(OLD) == plain and back.json["mode"] == "rollback"


def test_bad_inputs_exit_3_and_write_nothing(dep):
    plain = insert_profiles(dep, OLD, 5)
    before_values, before_env = dep.values(), dep.env_file("api").read_bytes()

    def unchanged():
        assert dep.values() == before_values and dep.env_file("api").read_bytes() == before_env
        assert not queue_paused(dep)

    short = run_cli("--yes", "keys", "rotate", "--new-key", "too-short-a-key", config=dep.cfg)
    assert short.code == 3 and "shorter than 32" in short.output and "too-short-a-key" not in short.output
    unchanged()
    # the same 32 bytes spelled another way (wrapped lines) derive the same AES key
    raw = base64.b64decode(OLD)
    same = "\n".join(base64.b64encode(raw).decode()[i:i + 11] for i in range(0, 44, 11))
    r = run_cli("--yes", "keys", "rotate", "--new-key", same, config=dep.cfg)
    assert r.code == 3 and "nothing to rotate" in r.output
    unchanged()

    stranger = crypto.generate_key()
    insert_profiles(dep, stranger, 1, start=7)
    before_values = dep.values()
    new = crypto.generate_key()
    r = run_cli("--json", "--yes", "keys", "rotate", "--new-key", new, config=dep.cfg)
    assert r.code == 3, r.output
    assert 'id=p000007 column "apiKeyEncrypted"' in r.output and "nothing was changed" in r.output
    assert_no_secrets(r.output, plain, OLD, new, stranger)
    unchanged()

    with dep.connect() as c:
        c.execute('''UPDATE "AIProfile" SET "videoApiKeyEncrypted" = 'bm90.YSBwYXlsb2Fk' WHERE "id" = 'p000007' ''')
        c.execute('''UPDATE "AIProfile" SET "apiKeyEncrypted" = %s WHERE "id" = 'p000007' ''',
                  (crypto.encrypt("x", crypto.derive_key(OLD)),))
    before_values = dep.values()
    r = run_cli("--json", "--yes", "keys", "rotate", "--new-key", new, config=dep.cfg)
    assert r.code == 3 and 'id=p000007 column "videoApiKeyEncrypted": malformed payload' in r.output
    unchanged()
    assert dep.progress() is None or dep.progress()["phase"] != "reencrypting"


def test_sigterm_before_the_env_step_reverts_to_the_old_key(dep):
    plain = insert_profiles(dep, OLD, 600)
    new = crypto.generate_key()
    p = subprocess.Popen([EXE, "--config", str(dep.cfg), "--yes", "keys", "rotate", "--new-key", new,
                          "--batch-size", "20", "--workers", "1"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + 60
    while not ((pr := dep.progress()) and pr.get("batches", 0) >= 3):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, out + err
    assert "decryptable with the old key" in err and "env files are unchanged" in err, err
    assert dep.plaintexts(OLD) == plain and whose(dep, OLD, new)[new] == 0
    assert dep.env("api")["API_KEY_ENCRYPTION_KEY"] == OLD and "API_KEY_ENCRYPTION_KEY_NEXT" not in dep.env("api")
    assert not queue_paused(dep) and dep.progress()["phase"] == "reverted"
    assert_no_secrets(out + err, plain, OLD, new)


def test_sigkill_at_random_batch_boundaries_then_rerun_finishes(dep):
    """Every kill leaves each value in exactly one of the two keys and the queue paused; reruns finish the job."""
    plain = insert_profiles(dep, OLD, 1500)
    rng = random.Random(4)
    argv = [EXE, "--config", str(dep.cfg), "--json", "--yes", "keys", "rotate", "--generate", "--batch-size", "50"]
    kills = 0
    for _attempt in range(30):
        done_before = (dep.progress() or {}).get("batches", 0)
        target = done_before + rng.randint(1, 6)
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NO_COLOR": "1"})
        deadline = time.monotonic() + 120
        while p.poll() is None and (dep.progress() or {}).get("batches", 0) < target:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        if p.poll() is None and kills < 6:
            p.kill()
            p.wait(30)
            kills += 1
            new = dep.env("api").get("API_KEY_ENCRYPTION_KEY_NEXT")
            assert new, "the generated key must be kept before any value uses it"
            counts = whose(dep, OLD, new)
            assert sum(counts.values()) == 1500 + 1000 + 1125
            assert queue_paused(dep), "a killed rotation leaves the queue paused"
            continue
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
        break
    assert kills >= 3
    new = dep.env("api")["API_KEY_ENCRYPTION_KEY"]
    assert new != OLD and dep.env("api")["API_KEY_ENCRYPTION_KEY_PREVIOUS"] == OLD
    assert dep.plaintexts(new) == plain and whose(dep, OLD, new)[OLD] == 0
    assert not queue_paused(dep) and dep.progress()["phase"] == "done"


@pytest.mark.parametrize("old_raw, new_raw", [
    (base64.urlsafe_b64encode(bytes(range(200, 232))).decode().rstrip("="),  # 43 URL-safe characters
     "\n".join(base64.b64encode(bytes(range(32))).decode()[i:i + 16] for i in range(0, 44, 16))),  # wrapped base64
    ("a passphrase that is not base64, but long enough", " " + base64.b64encode(bytes(range(7, 39))).decode() + "\n"),
])
def test_tricky_key_strings_round_trip_with_node(dep, old_raw, new_raw):
    """Values Node encrypted with the old key string decrypt in Node with the new key string after --db-only."""
    texts = [f"sk-tricky-{i}-{os.urandom(6).hex()}" for i in range(6)]
    payloads = node(key=old_raw, plaintexts=texts)["encrypted"]
    rows = [(payloads[2 * i], payloads[2 * i + 1], None) for i in range(3)]
    plain = insert_profiles(dep, None, 3, payloads=rows)
    env = {"API_KEY_ENCRYPTION_KEY": old_raw, "REDIS_URL": dep.redis_url, "AI_QUEUE_NAME": dep.queue}
    r = run_cli("--json", "--yes", "keys", "rotate", "--db-only", "--new-key", new_raw, config=dep.cfg, env=env)
    assert r.code == 0, r.output
    assert r.json["reencrypted"] == 6 and r.json["new_fingerprint"] == fp(new_raw)
    stored = [v for vals in dep.values().values() for v in vals if v]
    assert sorted(node(key=new_raw, payloads=stored)["decrypted"]) == sorted(texts)
    assert_no_secrets(r.output, plain, old_raw.strip(), new_raw.strip())
    assert queue_paused(dep) and any("queue resume" in s for s in r.json["next_steps"])
    assert "api and worker" in r.json["next_steps"][0]


def test_rows_changed_between_the_check_and_the_writes_keep_what_was_written_last(dep):
    """The compare-and-set writes only the row versions the check read: a profile the api rewrites (old key, new key,
    or unchanged text) after the check keeps its new content, and the verification finds what is still old."""
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.keys.engine import Engine

    plain = insert_profiles(dep, OLD, 600)
    new_raw = crypto.generate_key()
    old, new = crypto.derive_key(OLD), crypto.derive_key(new_raw)
    with Engine(parse_database_url(dep.database_url), [old, new], batch=100) as eng:
        check = eng.scan((0, 1), reseal=(0, 1))
        assert check.bad == 0 and check.by_key[1] == 0 and len(eng.memo) == 6
        with dep.connect() as c:  # the api writes meanwhile
            c.execute('UPDATE "AIProfile" SET "apiKeyEncrypted" = %s WHERE "id" = %s',
                      (crypto.encrypt("rewritten-old", old), "p000005"))
            c.execute('UPDATE "AIProfile" SET "apiKeyEncrypted" = "apiKeyEncrypted" WHERE "id" = %s', ("p000010",))
            c.execute('UPDATE "AIProfile" SET "apiKeyEncrypted" = %s WHERE "id" = %s',
                      (crypto.encrypt("rewritten-new", new), "p000300"))
            c.execute('DELETE FROM "AIProfile" WHERE "id" = %s', ("p000020",))
        plain.update({"p000005": ("rewritten-old", *plain["p000005"][1:]),
                      "p000300": ("rewritten-new", *plain["p000300"][1:])})
        del plain["p000020"]
        plain.update(insert_profiles(dep, OLD, 1, start=999))
        written = eng.reencrypt(0, 1)
        assert written.rows == 600  # the rows the check read and sealed (the one inserted since is not among them)
        assert sorted(eng.written) == list(range(6))  # each range's batch xid: the scan below counts those rows
        first = eng.scan((1, 0))
        assert first.bad == 0 and sorted(first.straggler_ids) == ["p000005", "p000010", "p000999"]
        eng.reencrypt(0, 1, ids=first.straggler_ids)
        final = eng.scan((1, 0))
        assert (final.bad, final.by_key[1], final.straggler_ids) == (0, final.values, [])
        assert final.rows == 600 and whose(dep, OLD, new_raw)[OLD] == 0
        assert dep.plaintexts(new_raw) == plain
        # the verification trusts a range only while its text is exactly what was written and opened
        other = crypto.derive_key(crypto.generate_key())
        with dep.connect() as c:
            c.execute('UPDATE "AIProfile" SET "videoApiKeyEncrypted" = %s WHERE "id" = %s',
                      (crypto.encrypt("x", other), "p000101"))
        tampered = eng.scan((1, 0))
        assert (tampered.neither, [(e.row_id, e.column) for e in tampered.errors]) == (
            1, [("p000101", "videoApiKeyEncrypted")])



def _relentless_rotation(dep, tmp_name: str, *, full: bool):
    """A rotation during which a service with the old key writes one more profile before every scan of the
    verification (so no scan ever finds none) until the restart hook runs; the events, and the result or error."""
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.keys.rotate import Hooks, Rotation

    insert_profiles(dep, OLD, 50)
    new_raw = crypto.generate_key()
    events: list[str] = []
    writing = [True]
    n = [1000]

    def say(msg: str) -> None:
        events.append(msg)
        if writing[0] and (msg.startswith("step 4") or "with the old key meanwhile" in msg):
            insert_profiles(dep, OLD, 1, start=n[0])
            n[0] += 1

    def restart(_say) -> dict:
        writing[0] = False  # the services now run with the new key
        events.append("restart")
        return {"restarted": True}

    hooks = Hooks(write_env=lambda: events.append("env") or [], restart=restart) if full else Hooks()
    rot = Rotation(target=parse_database_url(dep.database_url), old=crypto.derive_key(OLD),
                   new=crypto.derive_key(new_raw), mode="full" if full else "db-only",
                   state_dir=dep.root / tmp_name, hooks=hooks, say=say, batch=20)
    try:
        return events, rot.run(), new_raw
    except Exception as e:  # noqa: BLE001 - returned for the test to look at
        return events, e, new_raw


def test_old_key_writes_until_the_restart_are_swept_after_it(dep):
    """Before the restart the api still runs with the old key: values it keeps writing do not fail the rotation,
    the sweep after the restart re-encrypts them and the verification then finds every value in the new key."""
    events, res, new_raw = _relentless_rotation(dep, "keys-full", full=True)
    assert not isinstance(res, Exception), res
    assert res.phase == "done" and res.late_writes >= 5 and res.swept >= 1
    assert any("sweep after their restart" in e for e in events) and events.index("restart") > events.index("env")
    assert whose(dep, OLD, new_raw)[OLD] == 0


def test_old_key_writes_that_never_stop_fail_a_db_only_rotation(dep):
    """--db-only restarts nothing, so values that keep arriving in the old key are a service nobody will restart."""
    from aixsss_ops.keys.rotate import RotationFailed

    events, res, _new_raw = _relentless_rotation(dep, "keys-db-only", full=False)
    assert isinstance(res, RotationFailed) and "keep arriving encrypted with the old key" in res.message, res
    assert not any("sweep after their restart" in e for e in events)


def test_a_queue_slow_to_drain_ends_the_checks_writes_ahead_before_the_long_wait(dep):
    """The check writes its batches ahead, uncommitted, holding their row locks; the queue's drain gets STAGED_HOLD
    seconds with them held. When it needs longer they are rolled back (no lock held during the rest of the wait)
    and the pass writes them after it; the rotation still ends with every value in the new key."""
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.keys.rotate import STAGED_HOLD, Hooks, Rotation
    from aixsss_ops.poll import poll_until
    from tests.integration.test_keys_engine import _row_locked

    plain = insert_profiles(dep, OLD, 300)
    new_raw = crypto.generate_key()
    waits: list[tuple[float, bool]] = []  # (timeout asked, a profile row locked meanwhile)

    def drain(timeout: float) -> tuple[bool, int]:
        locked = bool(poll_until(lambda: _row_locked(dep, "p000001"), 5)) if not waits else _row_locked(dep, "p000001")
        waits.append((timeout, locked))
        return len(waits) > 1, 0 if len(waits) > 1 else 1  # drained only on the second call

    hooks = Hooks(pause=lambda: False, drain=drain, resume=lambda: None)
    rot = Rotation(target=parse_database_url(dep.database_url), old=crypto.derive_key(OLD),
                   new=crypto.derive_key(new_raw), mode="db-only", state_dir=dep.root / "keys-hold", hooks=hooks,
                   drain_timeout=30, batch=50)
    res = rot.run()
    assert waits == [(STAGED_HOLD, True), (30 - STAGED_HOLD, False)]
    assert res.phase == "db-done" and res.reencrypted == res.verified == sum(
        v is not None for vals in plain.values() for v in vals)
    assert dep.plaintexts(new_raw) == plain
