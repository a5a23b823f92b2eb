"""``env diff A B``: which variables differ between two env files or services, values masked."""

from __future__ import annotations

from collections.abc import Mapping

from aixsss_ops.output import MASK, is_secret_name, mask_url


def show(name: str, value: str | None) -> str | None:
    """A value as it may be shown: secrets as a mask with their length (the key with its fingerprint)."""
    if value is None:
        return None
    if name == "API_KEY_ENCRYPTION_KEY" and value:
        from aixsss_ops.crypto import derive_key, fingerprint

        return f"{MASK} ({len(value)} chars, key {fingerprint(derive_key(value))})"
    if is_secret_name(name):
        return f"{MASK} ({len(value)} chars)"
    return mask_url(value) if "://" in value else value


def diff(a: Mapping[str, str], b: Mapping[str, str]) -> list[dict]:
    """One row per variable that is only in A, only in B, or different; sorted by name."""
    rows = []
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name), b.get(name)
        if va == vb:
            continue
        kind = "only in A" if vb is None else "only in B" if va is None else "differs"
        sa, sb = show(name, va), show(name, vb)
        note = None
        if kind == "differs" and sa == sb:
            note = "the passwords differ" if "://" in (va or "") else "the values differ"
        rows.append({"variable": name, "change": kind, "a": sa, "b": sb, "note": note})
    return rows
