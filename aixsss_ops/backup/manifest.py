"""The backup manifest: what a backup holds and how to prove it intact.

``manifest.json`` is written last, atomically, and the backup directory is renamed from ``<id>.partial`` to
``<id>`` only after that: a directory without a valid manifest is never a backup.

With a backup key configured, ``manifest.hmac`` beside it authenticates the manifest: HMAC-SHA256 of its canonical
JSON under a key derived (HKDF) from the backup key. The per-file SHA-256 sums then prove the files because the
manifest that lists them is proven; without a key the sums only catch accidents, not someone who rewrites both.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aixsss_ops.errors import CheckFailed

FORMAT = 1
MANIFEST = "manifest.json"
META = "meta.json"  # mutable sidecar (keep flag, last verification); not covered by the checksums
SIGNATURE = "manifest.hmac"  # HMAC-SHA256 of the manifest (with a backup key); written before the manifest
MAC_ALGORITHM = "HMAC-SHA256"
DB_DIR = "db"
GLOBALS = "globals.sql"
OBJECTS = "objects.json"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_id(at: datetime) -> str:
    """``20250102T030405Z-ab12``: UTC time plus a random suffix (ordering always uses the manifest's time)."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def load(path: Path) -> dict[str, Any]:
    """A manifest, validated enough to trust its shape; CheckFailed names the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckFailed(f"{path}: manifest missing (incomplete backup)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckFailed(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckFailed(f"{path}: unknown manifest format {data.get('format') if isinstance(data, dict) else '?'}")
    for key in ("id", "created_at", "files", "database"):
        if key not in data:
            raise CheckFailed(f"{path}: manifest lacks '{key}'")
    return data


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest's MAC covers: independent of how a file or an S3 object spells the JSON."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def mac_key(backup_key: bytes) -> bytes:
    """A key of its own for the manifest MAC (never the encryption key itself), derived from the backup key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"aixsss-ops backup manifest mac v1").derive(backup_key)


def sign(manifest: dict[str, Any], backup_key: bytes) -> dict[str, Any]:
    """The content of ``manifest.hmac``: algorithm, the backup key's fingerprint (never the key), the MAC."""
    import hmac

    from aixsss_ops.crypto import fingerprint

    mac = hmac.new(mac_key(backup_key), canonical(manifest), hashlib.sha256).hexdigest()
    return {"algorithm": MAC_ALGORITHM, "key_fingerprint": fingerprint(backup_key), "mac": mac}


def authenticate(manifest: dict[str, Any], signature: dict[str, Any] | None, backup_key: bytes | None,
                 key_env: str, where: str) -> str:
    """How far the manifest can be trusted: "authenticated", "unauthenticated" (no MAC: checksums only), or
    "not checked" (a MAC but no key to check it). CheckFailed, naming the manifest, when the MAC does not match, when
    it was made with another key, or when an encrypted backup's manifest has lost its MAC (every encrypted backup
    is signed: the key was there)."""
    import hmac

    from aixsss_ops.crypto import fingerprint

    if not signature:
        if manifest.get("encryption"):
            raise CheckFailed(f"{where}/{MANIFEST}: the backup is encrypted but its manifest has no {SIGNATURE} "
                              "(removed or replaced): the manifest cannot be trusted")
        return "unauthenticated"
    if not isinstance(signature, dict) or signature.get("algorithm") != MAC_ALGORITHM or \
            not isinstance(signature.get("mac"), str):
        raise CheckFailed(f"{where}/{SIGNATURE}: not a manifest signature this tool knows (altered)")
    if backup_key is None:
        return "not checked"
    if signature.get("key_fingerprint") != fingerprint(backup_key):
        raise CheckFailed(f"{where}/{MANIFEST}: signed with another backup key (fingerprint "
                          f"{signature.get('key_fingerprint')}; {key_env} has {fingerprint(backup_key)})")
    want = sign(manifest, backup_key)["mac"]
    if not hmac.compare_digest(want, signature["mac"]):
        raise CheckFailed(f"{where}/{MANIFEST}: authentication failed (HMAC-SHA256 mismatch): the manifest was "
                          "altered after the backup was taken")
    return "authenticated"
