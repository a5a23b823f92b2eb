"""The AIXSSS key derivation and payload format, cross-checked against Node itself."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess

import pytest

from aixsss_ops import crypto

NODE = "/usr/bin/node"

# Node's side of the contract, with nothing but its built-ins.
NODE_PROGRAM = r"""
const crypto = require('crypto');
const req = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const derive = (raw) => {
  const b = Buffer.from(raw, 'base64');
  return b.length === 32 ? b : crypto.createHash('sha256').update(raw, 'utf8').digest();
};
const out = {
  decoded: req.raws.map((raw) => Buffer.from(raw, 'base64').toString('hex')),
  derived: req.raws.map((raw) => derive(raw).toString('hex')),
  encrypted: req.plaintexts.map((text) => {
    const iv = crypto.randomBytes(12);
    const c = crypto.createCipheriv('aes-256-gcm', derive(req.key), iv);
    const ct = Buffer.concat([c.update(text, 'utf8'), c.final()]);
    return [iv, c.getAuthTag(), ct].map((b) => b.toString('base64')).join('.');
  }),
  decrypted: req.payloads.map((payload) => {
    const [iv, tag, ct] = payload.split('.').map((p) => Buffer.from(p, 'base64'));
    const d = crypto.createDecipheriv('aes-256-gcm', derive(req.key), iv);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]).toString('utf8');
  }),
};
process.stdout.write(JSON.stringify(out));
"""


def node(raws=(), *, key="", plaintexts=(), payloads=()) -> dict:
    request = {"raws": list(raws), "key": key, "plaintexts": list(plaintexts), "payloads": list(payloads)}
    done = subprocess.run(
        [NODE, "-e", NODE_PROGRAM], input=json.dumps(request), capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(done.stdout)


RANDOM_32 = bytes(range(1, 33))
TRICKY_RAWS = [
    base64.b64encode(RANDOM_32).decode(),  # 44 chars, standard alphabet, padded
    base64.urlsafe_b64encode(RANDOM_32).decode().rstrip("="),  # 43 URL-safe chars, no padding
    base64.urlsafe_b64encode(bytes([0xFB, 0xFF] * 16)).decode(),  # URL-safe characters - and _ present
    "\n".join(base64.b64encode(RANDOM_32).decode()[i:i + 10] for i in range(0, 44, 10)),  # wrapped lines
    " " + base64.b64encode(RANDOM_32).decode().replace("A", "A \t") + "\r\n",
    "correct horse battery staple, but longer than 32 chars",  # a passphrase
    base64.b64encode(bytes(31)).decode(),  # 31 bytes
    base64.b64encode(bytes(33)).decode(),  # 33 bytes
    base64.b64encode(bytes(24)).decode() + "=" + base64.b64encode(bytes(24)).decode(),  # '=' in the middle
    base64.b64encode(RANDOM_32).decode().rstrip("=") + "==junk",
    base64.b64encode(RANDOM_32).decode()[:43] + "B",  # leftover bits set in the last char
    "Schlüssel-mit-Umlauten-und-mehr-als-32-Zeichen",
    "密钥" * 20,
    "passphrase with an undecodable byte \udcff as os.environ gives it",
    "Ł" * 44,  # UTF-16 units Node truncates to their low byte ('A')
    "QUJD\U0001F600" + base64.b64encode(RANDOM_32).decode(),  # the emoji's low surrogate ends in 0x3D ('=')
    "",
    "Q",
    "QQ=A=",
]


def fuzz_raws(count: int = 400) -> list[str]:
    rng = random.Random(20240601)
    common, rare = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_", "= \n\t.!é€Ł\u013d😀"
    alphabet, weights = common + rare, [1.0] * len(common) + [0.3] * len(rare)
    return ["".join(rng.choices(alphabet, weights, k=rng.randint(0, 60))) for _ in range(count)]


def test_node_base64_decoding_matches_node_on_tricky_and_random_strings():
    raws = TRICKY_RAWS + fuzz_raws()
    expected = node(raws)["decoded"]
    mismatches = [r for r, hexed in zip(raws, expected, strict=True) if crypto.node_base64_decode(r).hex() != hexed]
    assert mismatches == []


def test_derive_key_matches_node():
    expected = node(TRICKY_RAWS)["derived"]
    assert [crypto.derive_key(r).hex() for r in TRICKY_RAWS] == expected


def test_the_two_derivation_branches():
    standard = base64.b64encode(RANDOM_32).decode()
    url_safe = base64.urlsafe_b64encode(RANDOM_32).decode().rstrip("=")
    assert crypto.derive_key(standard) == crypto.derive_key(url_safe) == RANDOM_32
    assert crypto.is_real_32_byte_key(standard) and crypto.is_real_32_byte_key(url_safe)

    passphrase = "not base64 at all, but long enough!!"
    assert not crypto.is_real_32_byte_key(passphrase)
    assert crypto.derive_key(passphrase) == hashlib.sha256(passphrase.encode()).digest()


def test_generated_keys_are_real_and_distinct():
    a, b = crypto.generate_key(), crypto.generate_key()
    assert a != b
    assert crypto.is_real_32_byte_key(a)
    assert crypto.derive_key(a) == base64.b64decode(a)


def test_round_trip_and_payload_shape():
    key = crypto.derive_key(crypto.generate_key())
    for text in ["sk-test-123", "", "密钥 🔑", "x" * 5000]:
        payload = crypto.encrypt(text, key)
        iv, tag, ct = (base64.b64decode(p, validate=True) for p in payload.split("."))
        assert (len(iv), len(tag), len(ct)) == (12, 16, len(text.encode()))
        assert crypto.decrypt(payload, key) == text
    assert crypto.encrypt("same", key) != crypto.encrypt("same", key)


def test_node_encrypts_python_decrypts_and_back():
    raw = "a passphrase that uses the SHA-256 branch"
    texts = ["sk-live-abcdef", "图像 key", ""]
    from_node = node(key=raw, plaintexts=texts, payloads=[crypto.encrypt(t, crypto.derive_key(raw)) for t in texts])
    assert [crypto.decrypt(p, crypto.derive_key(raw)) for p in from_node["encrypted"]] == texts
    assert from_node["decrypted"] == texts


def test_node_payload_with_url_safe_key():
    raw = base64.urlsafe_b64encode(bytes([0xFB, 0xFF] * 16)).decode().rstrip("=")
    [payload] = node(key=raw, plaintexts=["secret-value"])["encrypted"]
    assert crypto.decrypt(payload, crypto.derive_key(raw)) == "secret-value"


def test_wrong_key_is_reported_without_secrets():
    plaintext = "sk-very-secret-value"
    raw_right, raw_wrong = crypto.generate_key(), crypto.generate_key()
    payload = crypto.encrypt(plaintext, crypto.derive_key(raw_right))
    with pytest.raises(crypto.WrongKey) as info:
        crypto.decrypt(payload, crypto.derive_key(raw_wrong))
    assert isinstance(info.value, crypto.CryptoError)
    message = str(info.value)
    for secret in (plaintext, raw_right, raw_wrong, crypto.derive_key(raw_wrong).hex()):
        assert secret not in message


def test_tampered_ciphertext_fails_the_tag_check():
    key = crypto.derive_key(crypto.generate_key())
    iv, tag, ct = crypto.encrypt("hello world", key).split(".")
    flipped = bytearray(base64.b64decode(ct))
    flipped[0] ^= 1
    with pytest.raises(crypto.WrongKey):
        crypto.decrypt(f"{iv}.{tag}.{base64.b64encode(bytes(flipped)).decode()}", key)


@pytest.mark.parametrize("payload", [
    "",
    "onlyone",
    "a.b",
    "a.b.c.d",
    "!!!.AAAA.AAAA",
    base64.b64encode(bytes(12)).decode() + "." + base64.b64encode(bytes(15)).decode() + ".AAAA",
    base64.b64encode(bytes(16)).decode() + "." + base64.b64encode(bytes(16)).decode() + ".AAAA",
    "sk-plaintext-key-stored-by-mistake",
])
def test_malformed_payloads(payload):
    key = crypto.derive_key(crypto.generate_key())
    with pytest.raises(crypto.MalformedPayload) as info:
        crypto.decrypt(payload, key)
    if payload:
        assert payload not in str(info.value)


def test_fingerprint_is_short_stable_and_not_the_key():
    key = crypto.derive_key(crypto.generate_key())
    fp = crypto.fingerprint(key)
    assert fp == crypto.fingerprint(key) and len(fp) == 16
    assert fp != crypto.fingerprint(crypto.derive_key(crypto.generate_key()))
    assert fp not in key.hex() and fp != hashlib.sha256(key).hexdigest()[:16]
