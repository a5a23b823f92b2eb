"""The AIXSSS provider-key encryption: key derivation and the ``iv.tag.ciphertext`` payload.

The api encrypts and the worker decrypts with a key derived from the raw
``API_KEY_ENCRYPTION_KEY``: Node's ``Buffer.from(raw, 'base64')`` when that gives
exactly 32 bytes, otherwise SHA-256 of the raw string. Node's decoder is lenient,
so it is reproduced here rather than using Python's strict one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NODE_BASE64 = {ord(c): i for i, c in enumerate(_ALPHABET)} | {ord("-"): 62, ord("_"): 63}
_IV_BYTES = 12
_TAG_BYTES = 16
_FINGERPRINT_DOMAIN = b"aixsss-ops/key-fingerprint/v1\x00"


class CryptoError(Exception):
    """A payload could not be decrypted. Messages never contain plaintext or key material."""


class MalformedPayload(CryptoError):
    """The text is not ``base64(iv).base64(tag).base64(ciphertext)``."""


class WrongKey(CryptoError):
    """The GCM tag check failed: the value was encrypted with another key (or altered)."""


def node_base64_decode(raw: str) -> bytes:
    """Node's ``Buffer.from(raw, 'base64')``.

    Node reads the string as UTF-16 code units truncated to their low byte, accepts
    both alphabets, skips anything else, stops at the first ``=`` and drops the bits
    of an incomplete trailing byte.
    """
    units = raw.encode("utf-16-le", "surrogatepass")[::2]
    out = bytearray()
    acc = bits = 0
    for unit in units:
        if unit == 0x3D:
            break
        value = _NODE_BASE64.get(unit)
        if value is None:
            continue
        acc = (acc << 6 | value) & 0xFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)


def _node_utf8(raw: str) -> bytes:
    # Node encodes a lone surrogate (what os.environ makes of undecodable bytes) as U+FFFD.
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in raw).encode()


def is_real_32_byte_key(raw: str) -> bool:
    """True when ``raw`` decodes (the Node way) to exactly 32 bytes, i.e. no SHA-256 fallback."""
    return len(node_base64_decode(raw)) == 32


def derive_key(raw: str) -> bytes:
    decoded = node_base64_decode(raw)
    return decoded if len(decoded) == 32 else hashlib.sha256(_node_utf8(raw)).digest()


def generate_key() -> str:
    """A new raw key: base64 of 32 random bytes, the form AIXSSS recommends."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def fingerprint(key: bytes) -> str:
    """A short, non-reversible name for a derived key, safe for manifests and logs."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()[:16]


def encrypt(plaintext: str, key: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = os.urandom(_IV_BYTES)
    sealed = AESGCM(key).encrypt(iv, plaintext.encode("utf-8"), None)
    ciphertext, tag = sealed[:-_TAG_BYTES], sealed[-_TAG_BYTES:]
    return ".".join(base64.b64encode(part).decode("ascii") for part in (iv, tag, ciphertext))


def _b64_part(text: str, name: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise MalformedPayload(f"encrypted payload: the {name} part is not base64") from None


def split_payload(payload: str) -> tuple[bytes, bytes, bytes]:
    """``(iv, tag, ciphertext)`` of a stored value; :class:`MalformedPayload` unless it has the exact shape."""
    parts = payload.split(".")
    if len(parts) != 3:
        raise MalformedPayload(f"encrypted payload must have 3 dot-separated parts, found {len(parts)}")
    iv, tag, ciphertext = (_b64_part(parts[0], "iv"), _b64_part(parts[1], "tag"), _b64_part(parts[2], "ciphertext"))
    if len(iv) != _IV_BYTES or len(tag) != _TAG_BYTES:
        raise MalformedPayload(
            f"encrypted payload needs a {_IV_BYTES}-byte iv and a {_TAG_BYTES}-byte tag, "
            f"found {len(iv)} and {len(tag)} bytes"
        )
    return iv, tag, ciphertext


class KeyCipher:
    """One derived key, ready for many values (the AES context is built once; for bulk work such as rotation).

    ``open`` returns the plaintext bytes exactly as stored (no UTF-8 round trip), ``seal`` writes the payload.
    """

    __slots__ = ("_aead", "_invalid_tag", "fingerprint")

    def __init__(self, key: bytes):
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self._invalid_tag = InvalidTag
        self.fingerprint = fingerprint(key)

    def __repr__(self) -> str:
        return f"KeyCipher(fingerprint={self.fingerprint})"

    def open(self, payload: str) -> bytes:
        iv, tag, ciphertext = split_payload(payload)
        try:
            return self._aead.decrypt(iv, ciphertext + tag, None)
        except self._invalid_tag:
            raise WrongKey("authentication tag mismatch: encrypted with another key, or altered") from None

    def seal(self, plaintext: bytes) -> str:
        iv = os.urandom(_IV_BYTES)
        sealed = self._aead.encrypt(iv, plaintext, None)
        b64 = binascii.b2a_base64
        return (b64(iv, newline=False) + b"." + b64(sealed[-_TAG_BYTES:], newline=False) + b"."
                + b64(sealed[:-_TAG_BYTES], newline=False)).decode("ascii")


def decrypt(payload: str, key: bytes) -> str:
    return KeyCipher(key).open(payload).decode("utf-8", "replace")
