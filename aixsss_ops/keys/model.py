"""What the key passes read and report: the table and columns holding the provider keys, the results of a scan, of
a re-encryption pass and of one chunk, and the bad values. Nothing here holds plaintext or keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TABLE = "AIProfile"
COLUMNS = ("apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted")
MAX_ERRORS = 50
MAX_STRAGGLERS = 100_000  # row ids a scan keeps of rows holding a value not of its first key

SELECT = ", ".join(f'"{c}"' for c in COLUMNS)


@dataclass(frozen=True)
class BadValue:
    """One stored value that no given key opens (or that is not a payload at all). Never holds the value."""

    row_id: str
    column: str
    reason: str

    def __str__(self) -> str:
        return f'"{TABLE}" id={self.row_id} column "{self.column}": {self.reason}'


@dataclass
class ScanResult:
    rows: int = 0
    values: int = 0
    nulls: int = 0
    by_key: list[int] = field(default_factory=list)  # counts per key, in the order the keys were given
    neither: int = 0
    malformed: int = 0
    errors: list[BadValue] = field(default_factory=list)  # the first MAX_ERRORS
    straggler_ids: list[str] = field(default_factory=list)  # rows holding a value not of the first key (capped)

    @property
    def bad(self) -> int:
        return self.neither + self.malformed

    def merge(self, other: ScanResult) -> None:
        self.rows += other.rows
        self.values += other.values
        self.nulls += other.nulls
        self.by_key = [a + b for a, b in zip(self.by_key, other.by_key, strict=True)] if self.by_key else other.by_key
        self.neither += other.neither
        self.malformed += other.malformed
        self.errors += other.errors[: MAX_ERRORS - len(self.errors)]
        self.straggler_ids += other.straggler_ids[: MAX_STRAGGLERS - len(self.straggler_ids)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["errors"] = [str(e) for e in self.errors]
        del d["straggler_ids"]
        return d


@dataclass
class PassResult:
    batches: int = 0
    rows: int = 0
    reencrypted: int = 0
    already: int = 0
    nulls: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class BadValues(Exception):
    """Values that neither key opens turned up during a pass; the batch holding them was rolled back."""

    def __init__(self, errors: list[BadValue]):
        super().__init__(f"{len(errors)} value(s) decrypt with neither key: {errors[0]}")
        self.errors = errors


@dataclass
class Chunk:
    """What the pool makes of one chunk of rows. ``update`` is temp-table COPY text: id, xmin read, new values."""

    scan: ScanResult
    last_id: str | None = None
    update: bytes = b""
    updates: int = 0
    first_update: str | None = None
    last_update: str | None = None
    # writing ``update`` leaves every row of the chunk in dst (False: a value of neither key, or of a key not in the
    # pair, turned up)
    resealed: bool = False
    unverified: bool = False  # the new values in ``update`` are still to be opened with dst (pool.verify_update)
    index: int | None = None  # the id range the chunk is (Engine.bounds), when it is one
