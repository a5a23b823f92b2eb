"""The per-value work of the key passes, as the pool's worker processes run it: whose key each stored value is, new
values sealed with the target key and opened again with it, the temp-table COPY text of a batch.

The keys live only here, in the workers (``init_worker``), and nothing leaves a worker but ciphertext, counts and
(row id, column, reason): never plaintext, never a key.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Sequence

from aixsss_ops.crypto import KeyCipher, MalformedPayload, WrongKey
from aixsss_ops.keys.copy_codec import decode_field, encode_line
from aixsss_ops.keys.model import COLUMNS, MAX_ERRORS, BadValue, Chunk, ScanResult
from aixsss_ops.procutil import die_with_parent

_CIPHERS: list[KeyCipher] = []
_AEADS: list = []  # AESGCM of each key, for the inlined common case
_INVALID_TAG: list = []  # cryptography's InvalidTag, imported with the keys


def init_worker(keys: Sequence[bytes], parent: int | None = None) -> None:
    """Pool worker start: Ctrl-C and SIGTERM are the parent's business (it reverts, with this pool), and a parent killed
    by SIGKILL takes us along."""
    global _CIPHERS
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    term_from_parent_only(parent)
    die_with_parent(parent)  # a parent killed by SIGKILL (even before this ran) takes the pool along
    _CIPHERS = [KeyCipher(k) for k in keys]
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _AEADS[:] = [AESGCM(k) for k in keys]
    _INVALID_TAG[:] = [InvalidTag]


def term_from_parent_only(parent: int | None) -> None:
    """A worker dies of SIGTERM only when ``parent`` (the pool's process) sends it: ``ProcessPoolExecutor`` terminates
    the workers of a broken pool that way. One sent by anyone else (a supervisor stopping the whole process group or
    cgroup, ``kill -- -PGID``) is the parent's business: it reverts, with this pool, which must outlive the signal.
    Nor does a worker run the handler it inherited from the parent (``keys rotate``'s raises KeyboardInterrupt).

    SIGTERM is blocked and a thread takes it with ``sigwaitinfo``, which tells who sent it."""
    import signal
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is None:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # this thread takes it: the default,
                os.kill(os.getpid(), signal.SIGTERM)  # the process ends as terminate() means it to
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait, name="sigterm", daemon=True).start()


_a2b = binascii.a2b_base64


def open_value(k: int, value: str) -> bytes:
    """``_CIPHERS[k].open(value)`` with the common case inlined (the same strict parsing); anything unusual goes
    through ``KeyCipher.open`` itself, so errors and their messages are exactly its own."""
    parts = value.split(".")
    if len(parts) == 3:
        try:
            iv, tag, ct = (_a2b(parts[0], strict_mode=True), _a2b(parts[1], strict_mode=True),
                           _a2b(parts[2], strict_mode=True))
        except ValueError:
            iv = tag = b""
        if len(iv) == 12 and len(tag) == 16:
            try:
                return _AEADS[k].decrypt(iv, ct + tag, None)
            except _INVALID_TAG[0]:
                raise WrongKey("authentication tag mismatch: encrypted with another key, or altered") from None
    return _CIPHERS[k].open(value)


def whose(value: str, order: Sequence[int]) -> int | str:
    """Index of the first key (in ``order``) opening ``value``, or a reason string."""
    for i in order:
        try:
            open_value(i, value)
            return i
        except WrongKey:
            continue
        except MalformedPayload as e:
            return f"malformed payload ({e})"
    return "decrypts with none of the given keys"


def classify(rows: list[tuple], order: Sequence[int], nkeys: int, reseal: tuple[int, int] | None = None,
             verify: bool = True) -> tuple[ScanResult, list[tuple]]:
    """Whose every value is; with ``reseal=(src, dst)`` also the rows' new values (src values sealed with dst)."""
    res = ScanResult(by_key=[0] * nkeys)
    first = order[0]
    sealed: list[tuple] = []
    for row in rows:
        res.rows += 1
        rid = row[0]
        straggler = False
        new = None
        for i, (col, value) in enumerate(zip(COLUMNS, row[1:], strict=True), 1):
            if value is None:
                res.nulls += 1
                continue
            res.values += 1
            if reseal is not None and reseal[0] == first:
                try:  # the common case of a check before rotating: open with src once, seal right away
                    plain = open_value(first, value)
                except (WrongKey, MalformedPayload):
                    plain = None
                if plain is not None:
                    res.by_key[first] += 1
                    sealed_value = _CIPHERS[reseal[1]].seal(plain)
                    # the verification with the new key of the exact text that will be stored: it is written only by a
                    # compare-and-set UPDATE setting this text, and the final scan trusts only the row versions those
                    # UPDATEs wrote
                    try:  # (verify=False: the caller opens it later, with verify_update, before writing it)
                        ok = not verify or open_value(reseal[1], sealed_value) == plain
                    except (WrongKey, MalformedPayload):
                        ok = False
                    if not ok:
                        res.neither += 1
                        straggler = True
                        if len(res.errors) < MAX_ERRORS:
                            res.errors.append(BadValue(str(rid), col, "a sealed value does not open with the new key"))
                        continue
                    if new is None:
                        new = list(row)
                    new[i] = sealed_value
                    continue
            who = whose(value, order)
            if isinstance(who, int):
                res.by_key[who] += 1
                straggler |= who != first
                continue
            straggler = True
            if who.startswith("malformed"):
                res.malformed += 1
            else:
                res.neither += 1
            if len(res.errors) < MAX_ERRORS:
                res.errors.append(BadValue(str(rid), col, who))
        if straggler:
            res.straggler_ids.append(rid)
        if new is not None:
            sealed.append((row, tuple(new)))
    return res, sealed


def reseal_all(data: bytes, src: int, dst: int, nkeys: int) -> Chunk | None:
    """The common case of ``classify_chunk`` with ``reseal=(src, dst)``, in one tight loop over the COPY bytes: every
    row has its three values (no NULL, nothing escaped) and each opens with ``src``. None as soon as anything else
    turns up (a value of another key, a malformed one, an escape): the caller then takes the general path for the
    whole chunk.

    Every new value is verified here: its ciphertext and tag are opened with ``dst`` under its IV, the very bytes
    whose base64 becomes the stored text. The text itself (``b2a`` of those bytes in the iv.tag.ciphertext order) is
    parsed back and opened (``open_value``) for the chunk's first value: one assembly for all of them."""
    if b"\\" in data:
        return None
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if not lines:
        return None
    dec, enc, vdec = _AEADS[src].decrypt, _AEADS[dst].encrypt, _AEADS[dst].decrypt
    a2b, b2a = binascii.a2b_base64, binascii.b2a_base64
    n = len(lines)
    ivs = os.urandom(12 * len(COLUMNS) * n)  # fresh random IVs, one read for the chunk
    out: list[bytes] = []
    add = out.append
    width = 2 + len(COLUMNS)  # id, xmin, the values
    cols = range(2, width)
    j = 0
    try:
        for ln in lines:
            f = ln.split(b"\t")  # each value is replaced by its new one in place; id and xmin stay
            if len(f) != width:
                return None
            for i in cols:
                iv, tag, ct = f[i].split(b".")
                iv, tag = a2b(iv, strict_mode=True), a2b(tag, strict_mode=True)
                if len(iv) != 12 or len(tag) != 16:
                    return None
                plain = dec(iv, a2b(ct, strict_mode=True) + tag, None)
                niv = ivs[j:j + 12]
                j += 12
                s = enc(niv, plain, None)
                if vdec(niv, s, None) != plain:
                    return None
                f[i] = b".".join((b2a(niv, newline=False), b2a(s[-16:], newline=False), b2a(s[:-16], newline=False)))
            add(b"\t".join(f))
    except (ValueError, _INVALID_TAG[0]):  # a wrong number of parts or fields, bad base64, another key
        return None
    add(b"")  # the last line's newline
    update = b"\n".join(out)
    try:
        first = update[:update.index(b"\n")].split(b"\t")[2].decode("ascii")
        if open_value(dst, first) != open_value(src, lines[0].split(b"\t")[2].decode("ascii")):
            return None
    except (WrongKey, MalformedPayload, UnicodeDecodeError):
        return None
    by_key = [0] * nkeys
    by_key[src] = len(COLUMNS) * n
    last = lines[-1].split(b"\t", 1)[0].decode("utf-8", "surrogateescape")
    return Chunk(ScanResult(rows=n, values=len(COLUMNS) * n, by_key=by_key), last, update=update, updates=n,
                 first_update=lines[0].split(b"\t", 1)[0].decode("utf-8", "surrogateescape"), last_update=last,
                 resealed=True)


def classify_chunk(data: bytes, order: Sequence[int], nkeys: int, reseal: tuple[int, int] | None = None,
                   verify: bool = True) -> Chunk:
    """``classify`` on a chunk of COPY text; with ``reseal=(src, dst)`` also its update (with ``verify=False`` its
    new values are not opened yet: ``unverified``). With ``reseal`` each row's COPY text carries its xmin after its id
    (``ranges.copy_out(xmin=True)``), which the update keeps for the compare-and-set."""
    if reseal is not None and reseal[0] == order[0]:
        fast = reseal_all(data, reseal[0], reseal[1], nkeys)
        if fast is not None:
            return fast
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    xmins: list[str] = []
    if reseal is not None:
        split = [ln.split("\t", 2) for ln in lines]
        xmins = [f[1] for f in split]
        lines = [f"{f[0]}\t{f[2]}" for f in split]
    rows = [tuple(ln.split("\t")) if "\\" not in ln else tuple(decode_field(f) for f in ln.split("\t")) for ln in lines]
    res, sealed = classify(rows, order, nkeys, reseal, verify)
    out = Chunk(res, rows[-1][0] if rows else None, unverified=bool(sealed) and not verify)
    others = any(n for k, n in enumerate(res.by_key) if reseal is None or k not in reseal)
    if reseal is None or res.bad or others:
        return out
    news = {row[0]: new for row, new in sealed}
    parts = []
    for row, ln, xmin in zip(rows, lines, xmins, strict=True):
        new = news.get(row[0])
        if new is None:  # nothing to change: all its values opened with dst
            continue
        if "\\" not in ln:  # nothing escaped: the fields (and sealed values, plain base64) go into COPY text as they are
            vals = "\t".join(new[1:])
            parts.append(f"{row[0]}\t{xmin}\t{vals}\n".encode("utf-8", "surrogateescape"))
        else:
            parts.append(encode_line((row[0], xmin, *new[1:])))
    if sealed:
        out.first_update, out.last_update = sealed[0][0][0], sealed[-1][0][0]
    out.update, out.updates, out.resealed = b"".join(parts), len(sealed), True
    return out


def verify_update(update: bytes, dst: int) -> list[BadValue]:
    """Opens with ``dst`` every value of an update (temp-table COPY text: id, xmin, new values): the verification of
    a check's sealed values, in the pool while earlier batches are written, before this one is."""
    bad: list[BadValue] = []
    n = len(COLUMNS)
    vdec, a2b = _AEADS[dst].decrypt, binascii.a2b_base64
    for ln in update.decode("utf-8", "surrogateescape").split("\n"):
        if not ln:
            continue
        fields = ln.split("\t")
        if "\\" in ln:
            fields = [decode_field(f) for f in fields]
        for i in range(n):
            value = fields[2 + i]
            if value is None:
                continue
            try:  # open_value inlined for the usual well-formed value; anything else gets open_value's own error
                p = value.split(".")
                iv, tag = a2b(p[0], strict_mode=True), a2b(p[1], strict_mode=True)
                if len(p) == 3 and len(iv) == 12 and len(tag) == 16:
                    vdec(iv, a2b(p[2], strict_mode=True) + tag, None)
                    continue
            except (ValueError, IndexError, _INVALID_TAG[0]):
                pass
            try:
                open_value(dst, value)
            except (WrongKey, MalformedPayload) as e:
                bad.append(BadValue(str(fields[0]), COLUMNS[i], f"does not verify with the new key ({e})"))
    return bad
