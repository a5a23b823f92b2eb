"""Encryption at rest of backup files: AES-256-GCM, streamed in chunks.

File layout::

    header  = b"AXSB" | version (1 byte) | chunk size (4 bytes, big endian) | nonce prefix (8 random bytes)
    chunk i = AES-256-GCM(key, nonce = prefix | i (4 bytes), aad = header | i (8 bytes) | final flag) -> ct | tag

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last one carries the final flag
(an empty file is one empty final chunk). Reordering, dropping or appending chunks, or truncating the file at a
chunk boundary, fails the tag check. The key is never written beside the backup: the manifest holds only its
fingerprint, so a wrong key is named before any byte is decrypted.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

from aixsss_ops.crypto import derive_key, fingerprint
from aixsss_ops.errors import CheckFailed, UsageError

MAGIC = b"AXSB"
VERSION = 1
CHUNK = 1 << 20
TAG = 16
ALGORITHM = "AES-256-GCM/chunked-v1"
_HEADER = struct.Struct(">4sBI8s")


class DecryptError(CheckFailed):
    """A file failed authentication: altered, truncated, reordered, or another key."""


def load_key(raw: str | None, source: str) -> bytes:
    """The 32-byte key from the raw string of ``source`` (env var or flag); at least 32 characters."""
    if not raw:
        raise UsageError(f"backup encryption is on but {source} is not set",
                         hint="export it (e.g. base64 of 32 random bytes: `aixsss-ops keys generate`), or set "
                              "backup.encrypt = false")
    if len(raw) < 32:
        raise UsageError(f"{source} must be at least 32 characters")
    return derive_key(raw)


def key_fingerprint(key: bytes) -> str:
    return fingerprint(key)


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 1 << 32:
        raise ValueError("file too large for one nonce prefix")
    return prefix + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def encrypt_file(src: Path, dst: Path, key: bytes, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Encrypt ``src`` into ``dst``; returns (SHA-256 of ``dst``, size of ``dst``) computed in the same pass."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes = AESGCM(key)
    header = _HEADER.pack(MAGIC, VERSION, CHUNK, os.urandom(8))
    prefix = header[-8:]
    digest = hashlib.sha256(header)
    size = len(header)
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(header)
        index = 0
        block = fin.read(CHUNK)
        while True:
            nxt = fin.read(CHUNK) if len(block) == CHUNK else b""
            final = not nxt
            sealed = aes.encrypt(_nonce(prefix, index), block, _aad(header, index, final))
            fout.write(sealed)
            digest.update(sealed)
            size += len(sealed)
            if on_bytes:
                on_bytes(len(block))
            if final:
                break
            block, index = nxt, index + 1
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size


def decrypt_file(src: Path, dst: Path, key: bytes, name: str | None = None) -> None:
    """Decrypt ``src`` into ``dst``; a failed tag is a DecryptError naming the file (``dst`` is removed)."""
    try:
        with src.open("rb") as fin, dst.open("wb") as fout:
            _decrypt(fin, fout.write, key, name or src.name)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def decrypt_bytes(src: Path, key: bytes, name: str | None = None) -> bytes:
    """The plaintext of a small encrypted file, in memory (nothing written to disk)."""
    out = bytearray()
    with src.open("rb") as fin:
        _decrypt(fin, out.extend, key, name or src.name)
    return bytes(out)


def _decrypt(fin, write: Callable[[bytes], object], key: bytes, label: str) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes = AESGCM(key)
    header = fin.read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise DecryptError(f"{label}: not an encrypted backup file (short header)")
    magic, version, chunk, prefix = _HEADER.unpack(header)
    if magic != MAGIC or version != VERSION or not 0 < chunk <= 64 << 20:
        raise DecryptError(f"{label}: not an encrypted backup file (bad header)")
    index = 0
    block = fin.read(chunk + TAG)
    while True:
        nxt = fin.read(chunk + TAG) if len(block) == chunk + TAG else b""
        final = not nxt
        try:
            write(aes.decrypt(_nonce(prefix, index), block, _aad(header, index, final)))
        except InvalidTag:
            raise DecryptError(
                f"{label}: authentication failed at chunk {index}: wrong key, or the file was altered"
            ) from None
        if final:
            break
        block, index = nxt, index + 1
