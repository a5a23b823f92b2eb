"""Pure logic of `keys`: the bulk cipher, per-value classification and re-encryption, key validation."""

from __future__ import annotations

import pytest

from aixsss_ops import crypto
from aixsss_ops.errors import CheckFailed
from aixsss_ops.keys import copy_codec, pool
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
    pool.init_worker([A, B])
    res, sealed = pool.classify(rows(), [0, 1], 2)
    assert (res.rows, res.values, res.nulls, res.by_key, res.neither, res.malformed) == (3, 6, 3, [2, 2], 1, 1)
    assert [str(e) for e in res.errors] == [
        '"AIProfile" id=r2 column "apiKeyEncrypted": decrypts with none of the given keys',
        '"AIProfile" id=r2 column "imageApiKeyEncrypted": malformed payload (encrypted payload must have 3 '
        'dot-separated parts, found 2)',
    ]
    assert res.straggler_ids == ["r1", "r2", "r3"] and sealed == []


def test_a_check_can_seal_ahead_for_the_rotation():
    pool.init_worker([A, B])
    r1 = rows()[0]
    res, sealed = pool.classify([r1], [0, 1], 2, reseal=(0, 1))
    assert res.by_key == [1, 1]
    (row, new), = sealed
    assert row == r1 and new[0] == "r1" and crypto.decrypt(new[1], B) == "p1" and new[2] is None and new[3] == r1[3]


def test_keys_shorter_than_the_contract_are_refused_and_never_shown():
    with pytest.raises(CheckFailed, match="shorter than 32"):
        key("x" * 31, "--new-key")
    k = key("a passphrase that is long enough, yes", "--new-key")
    assert "passphrase" not in repr(k) and k.fingerprint in repr(k)
    assert Key(crypto.generate_key(), "env").derived != k.derived


def with_xmin(row, xmin="7"):
    """A row's COPY text as a re-sealing read prints it: the row version's xmin after the id."""
    return copy_codec.encode_line((row[0], xmin, *row[1:]))


def test_a_chunk_of_copy_text_yields_the_update_with_the_versions_read():
    pool.init_worker([A, B])
    rows = [("r1", crypto.encrypt("p1", A), None, crypto.encrypt("p1v", B)),  # a NULL: the escaped path
            ("r\t2", crypto.encrypt("p2", A), crypto.encrypt("p2i", A), crypto.encrypt("p2v", A)),
            ("r3", crypto.encrypt("p3", A), crypto.encrypt("p3i", B), crypto.encrypt("p3v", A)),  # the plain path
            ("r4", crypto.encrypt("p4", B), None, None)]  # nothing to change
    c = pool.classify_chunk(b"".join(with_xmin(r, str(i)) for i, r in enumerate(rows)), [0, 1], 2, (0, 1))
    assert (c.scan.rows, c.scan.by_key, c.scan.nulls, c.updates) == (4, [6, 3], 3, 3)
    assert (c.last_id, c.first_update, c.last_update) == ("r4", "r1", "r3")
    lines = c.update.decode().split("\n")[:-1]
    assert len(lines) == 3
    for i, (line, row) in enumerate(zip(lines, rows, strict=False)):
        fields = [None if f == "\\N" else f.replace("\\t", "\t") for f in line.split("\t")]
        assert fields[:2] == [row[0], str(i)]  # the id and the version read, for the compare-and-set
        new = fields[2:]
        for old, value in zip(row[1:], new, strict=True):
            if old is None:
                assert value is None
            else:
                assert crypto.decrypt(value, B) == crypto.decrypt(old, A if old != value else B)
    assert c.resealed
    bad = pool.classify_chunk(with_xmin(("r5", crypto.encrypt("p5", C), "not.a payload", None)), [0, 1], 2, (0, 1))
    assert bad.scan.bad == 2 and not bad.resealed and bad.updates == 0
    assert {e.column for e in bad.scan.errors} == {"apiKeyEncrypted", "imageApiKeyEncrypted"}
    assert all("p5" not in str(e) for e in bad.scan.errors)


def test_copy_text_escapes_round_trip():
    for v in ("a\\b\tc\nd\re", "plain", "\b\f\v"):
        line = copy_codec.encode_line(("id", v, None, "x")).decode()
        assert line.endswith("\n") and line.count("\t") == 3 and "\n" not in line[:-1]
        assert [copy_codec.decode_field(f) for f in line[:-1].split("\t")] == ["id", v, None, "x"]


def test_a_check_can_leave_the_verification_of_its_sealed_values_to_the_writes():
    pool.init_worker([A, B])
    rows = [("r1", crypto.encrypt("p1", A), None, crypto.encrypt("p1v", B))]
    c = pool.classify_chunk(b"".join(with_xmin(r) for r in rows), [0, 1], 2, (0, 1), False)
    assert c.unverified and c.updates == 1 and pool.verify_update(c.update, 1) == []
    forged = c.update.replace(c.update.split(b"\t")[2], crypto.encrypt("p1", C).encode())
    assert [(e.row_id, e.column) for e in pool.verify_update(forged, 1)] == [("r1", "apiKeyEncrypted")]
    assert not pool.classify_chunk(with_xmin(rows[0]), [0, 1], 2, (0, 1)).unverified


def test_the_tight_loop_for_plain_rows_matches_the_general_path_and_steps_aside_for_anything_else():
    pool.init_worker([A, B])
    rows = [(f"r{i}", crypto.encrypt(f"p{i}", A), crypto.encrypt(f"p{i}i", A), crypto.encrypt(f"p{i}v", A))
            for i in range(5)]
    data = b"".join(with_xmin(r, str(100 + i)) for i, r in enumerate(rows))
    fast = pool.reseal_all(data, 0, 1, 2)
    assert fast is not None and not fast.unverified
    assert (fast.scan.rows, fast.scan.values, fast.scan.by_key, fast.updates) == (5, 15, [15, 0], 5)
    assert (fast.first_update, fast.last_update, fast.last_id) == ("r0", "r4", "r4")
    for i, (line, row) in enumerate(zip(fast.update.decode().split("\n")[:-1], rows, strict=True)):
        fields = line.split("\t")
        assert fields[:2] == [row[0], str(100 + i)]
        assert [crypto.decrypt(v, B) for v in fields[2:]] == [crypto.decrypt(v, A) for v in row[1:]]
    assert pool.verify_update(fast.update, 1) == []
    other = rows[:2] + [("r9", crypto.encrypt("p9", B), crypto.encrypt("p9i", A), crypto.encrypt("p9v", A))]
    assert pool.reseal_all(b"".join(with_xmin(r) for r in other), 0, 1, 2) is None  # a value of B
    assert pool.reseal_all(with_xmin(("r1", crypto.encrypt("x", A), None, crypto.encrypt("y", A))), 0, 1,
                              2) is None  # a NULL is escaped
    c = pool.classify_chunk(b"".join(with_xmin(r) for r in other), [0, 1], 2, (0, 1))  # the general path takes it
    assert (c.scan.by_key, c.updates, c.scan.bad) == ([8, 1], 3, 0)



def test_the_tight_loop_writes_nothing_it_could_not_open_with_the_new_key(monkeypatch):
    """Its two checks: each new ciphertext opened with the new key, and the assembled text of the first value parsed
    back; either failing hands the chunk to the general path (None)."""
    import binascii

    pool.init_worker([A, B])
    data = b"".join(with_xmin((f"r{i}", crypto.encrypt("p", A), crypto.encrypt("q", A), crypto.encrypt("s", A)))
                    for i in range(3))
    assert pool.reseal_all(data, 0, 1, 2) is not None

    class Forged:  # seals with B; opens the first value with B, every later one with C (which fails)
        def __init__(self, seal, wrong):
            self.encrypt, self.opened, self.wrong, self.seal = seal.encrypt, 0, wrong, seal

        def decrypt(self, *a):
            self.opened += 1
            return (self.seal if self.opened == 1 else self.wrong).decrypt(*a)

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    real = list(pool._AEADS)
    monkeypatch.setattr(pool, "_AEADS", [real[0], Forged(real[1], AESGCM(C))])
    assert pool.reseal_all(data, 0, 1, 2) is None
    monkeypatch.setattr(pool, "_AEADS", real)

    class Reversed:  # the text assembled from reversed bytes: the ciphertext opens, the stored text would not
        a2b_base64 = staticmethod(binascii.a2b_base64)

        @staticmethod
        def b2a_base64(b, newline=True):
            return binascii.b2a_base64(bytes(b)[::-1], newline=newline)

    monkeypatch.setattr(pool, "binascii", Reversed)
    assert pool.reseal_all(data, 0, 1, 2) is None
