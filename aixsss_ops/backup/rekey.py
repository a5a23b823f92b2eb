"""Provider keys in a restored database: re-encrypt the values of an older ``API_KEY_ENCRYPTION_KEY``.

A backup holds ciphertext of the key in force when it was taken; its manifest records that key's fingerprint.
When the current key differs, restored ``"AIProfile"`` values are re-encrypted with the current key, given the
old one; without it the restore refuses before touching anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aixsss_ops.crypto import CryptoError, WrongKey, decrypt, encrypt, fingerprint
from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import CheckFailed

TABLE = "AIProfile"
COLUMNS = ("apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted")


@dataclass
class KeyPlan:
    action: str  # none | rekey | unknown
    backup_fingerprint: str | None
    current_fingerprint: str | None
    old_key: bytes | None = field(default=None, repr=False)
    current_key: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"action": self.action, "backup_key_fingerprint": self.backup_fingerprint,
                "current_key_fingerprint": self.current_fingerprint}


def plan_keys(backup_fp: str | None, current: bytes | None, old: bytes | None, old_source: str | None,
              env_hint: str) -> KeyPlan:
    """Decide before restoring: nothing to do, re-encrypt with ``old`` -> ``current``, or refuse (CheckFailed)."""
    cur_fp = fingerprint(current) if current else None
    if backup_fp is None or current is None:
        return KeyPlan("unknown", backup_fp, cur_fp)
    if backup_fp == cur_fp:
        return KeyPlan("none", backup_fp, cur_fp)
    if old is None:
        raise CheckFailed(
            f"the backup's provider keys were encrypted with another API_KEY_ENCRYPTION_KEY (fingerprint {backup_fp}; "
            f"the current key is {cur_fp}): restored profiles would be undecryptable",
            hint=f"pass the old key with --old-key, or keep it as API_KEY_ENCRYPTION_KEY_PREVIOUS in {env_hint}",
        )
    if fingerprint(old) != backup_fp:
        raise CheckFailed(
            f"the old key from {old_source} (fingerprint {fingerprint(old)}) is not the backup's key "
            f"(fingerprint {backup_fp})", hint="pass the key that was in force when the backup was taken")
    return KeyPlan("rekey", backup_fp, cur_fp, old, current)


def rekey_profiles(target: PgTarget, old: bytes, current: bytes) -> dict[str, int]:
    """Re-encrypt every value of ``old`` with ``current`` in one transaction; values in neither key abort it."""
    from psycopg import sql

    counts = {"reencrypted": 0, "already_current": 0}
    with target.connect(autocommit=False, timeout=10) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'"{TABLE}"',)).fetchone()[0] is None:
            return counts
        present = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (f'"{TABLE}"',)).fetchall()]
        cols = [c for c in COLUMNS if c in present]
        if not cols:
            return counts
        q = sql.SQL("SELECT id, {} FROM {} FOR UPDATE").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.Identifier(TABLE))
        updates: list[tuple] = []
        bad: list[str] = []
        for row in conn.execute(q).fetchall():
            rid, values = row[0], row[1:]
            new = list(values)
            changed = False
            for i, (col, v) in enumerate(zip(cols, values, strict=True)):
                if v is None:
                    continue
                try:
                    decrypt(v, current)
                    counts["already_current"] += 1
                    continue
                except WrongKey:
                    pass
                except CryptoError as e:
                    bad.append(f'"{TABLE}" id={rid} column {col}: {e}')
                    continue
                try:
                    new[i] = encrypt(decrypt(v, old), current)
                    changed = True
                    counts["reencrypted"] += 1
                except CryptoError:
                    bad.append(f'"{TABLE}" id={rid} column {col}: decrypts with neither the old nor the current key')
            if changed:
                updates.append((*new, rid))
        if bad:
            conn.rollback()
            raise CheckFailed(f"{len(bad)} provider key value(s) cannot be re-encrypted: {bad[0]}",
                              details="\n".join(bad[:50]))
        if updates:
            u = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                sql.Identifier(TABLE), sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols))
            with conn.cursor() as cur:
                cur.executemany(u, updates)
        conn.commit()
    return counts


def undecryptable(target: PgTarget, current: bytes) -> int:
    """How many stored values the current key cannot decrypt (for backups without a recorded fingerprint)."""
    from psycopg import sql

    with target.connect(timeout=10) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'"{TABLE}"',)).fetchone()[0] is None:
            return 0
        present = {r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (f'"{TABLE}"',)).fetchall()}
        cols = [c for c in COLUMNS if c in present]
        if not cols:
            return 0
        bad = 0
        q = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.Identifier(TABLE))
        for row in conn.execute(q):
            for v in row:
                if v is None:
                    continue
                try:
                    decrypt(v, current)
                except CryptoError:
                    bad += 1
        return bad
