"""Pure logic of `keys`: the bulk cipher, per-value classification and re-encryption, key validation."""

from __future__ import annotations

import pytest

from aixsss_ops import crypto
from aixsss_ops.errors import CheckFailed
from aixsss_ops.keys import engine
from aixsss_ops.keys.service import Key, key

A, B, C = (crypto.derive_key(crypto.generate_key()) for _ in range(3))


def test_key_cipher_interoperates_with_the_app_functions_and_keeps_bytes_exactly():
    kc = crypto.KeyCipher(A)
    assert crypto.decrypt(kc.seal("sk-é".encode()), A) == "sk-é"
    assert kc.open(crypto.encrypt("sk-x", A)) == b"sk-x"
    raw = b"\xff\xfe not utf-8"
    assert kc.open(kc.seal(raw)) == raw  # a rotation must not turn undecodable bytes into U+FFFD
    with pytest.raises(crypto.WrongKey):
        crypto.KeyCipher(B).open(kc.seal(b"x"))
    for bad in ("a.b", "####.####.####", crypto.encrypt("x", A) + ".x", "AAAA.AAAA.AAAA"):
        with pytest.raises(crypto.MalformedPayload):
            kc.open(bad)
    assert repr(kc) == f"KeyCipher(fingerprint={crypto.fingerprint(A)})"


def rows():
    return [
        ("r1", crypto.encrypt("p1", A), None, crypto.encrypt("p1v", B)),
        ("r2", crypto.encrypt("p2", C), "not.a payload", None),
        ("r3", crypto.encrypt("p3", B), crypto.encrypt("p3i", A), None),
    ]


def test_classify_counts_per_key_and_names_bad_values_without_their_text():
    engine._init([A, B])
    res, sealed = engine._classify(rows(), [0, 1], 2)
    assert (res.rows, res.values, res.nulls, res.by_key, res.neither, res.malformed) == (3, 6, 3, [2, 2], 1, 1)
    assert [str(e) for e in res.errors] == [
        '"AIProfile" id=r2 column "apiKeyEncrypted": decrypts with none of the given keys',
        '"AIProfile" id=r2 column "imageApiKeyEncrypted": malformed payload (encrypted payload must have 3 '
        'dot-separated parts, found 2)',
    ]
    assert res.straggler_ids == ["r1", "r2", "r3"] and sealed == []


def test_reencrypt_moves_old_values_and_leaves_new_ones():
    engine._init([A, B])
    good = [rows()[0], rows()[2]]
    updates, res, errors = engine._reencrypt(good, 0, 1)
    assert errors == [] and (res.rows, res.reencrypted, res.already, res.nulls) == (2, 2, 2, 2)
    by_id = {u[0]: u for u in updates}
    assert crypto.decrypt(by_id["r1"][1], B) == "p1" and by_id["r1"][3] == good[0][3]  # the B value is untouched
    assert crypto.decrypt(by_id["r3"][2], B) == "p3i" and by_id["r3"][1] == good[1][1]
    _u, _r, errors = engine._reencrypt([rows()[1]], 0, 1)
    assert {e.column for e in errors} == {"apiKeyEncrypted", "imageApiKeyEncrypted"}
    assert all("p2" not in str(e) for e in errors)


def test_a_check_can_seal_ahead_for_the_rotation():
    engine._init([A, B])
    r1 = rows()[0]
    res, sealed = engine._classify([r1], [0, 1], 2, reseal=(0, 1))
    assert res.by_key == [1, 1]
    (row, new), = sealed
    assert row == r1 and new[0] == "r1" and crypto.decrypt(new[1], B) == "p1" and new[2] is None and new[3] == r1[3]


def test_keys_shorter_than_the_contract_are_refused_and_never_shown():
    with pytest.raises(CheckFailed, match="shorter than 32"):
        key("x" * 31, "--new-key")
    k = key("a passphrase that is long enough, yes", "--new-key")
    assert "passphrase" not in repr(k) and k.fingerprint in repr(k)
    assert Key(crypto.generate_key(), "env").derived != k.derived
