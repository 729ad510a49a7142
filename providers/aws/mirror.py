"""The aws cache kept in the run's state Store too, so a Lambda cold start does not refetch its history.

The SQLite cache (``cache``) lives in Lambda's ``/tmp``, which a cold start empties: without a copy, the first
run of every new container re-reads 77 days of Cost Explorer (a request per day or two at 1,000 accounts,
$0.01 each), every account's names and tags, and the whole hourly CPU window of every (account, region).
Lambda keeps an idle container for minutes, not hours, so with an hourly schedule most runs are cold.

The copy goes where the run's state lives (``costwatch.state.Store``: DynamoDB on Lambda, SQLite elsewhere),
table ``cache``, as compressed chunks: one per UTC day of CPU (numpy arrays: node index int32, epoch hour
int64, Average and Maximum float32, plus the labels of the day's instances), one per Cost Explorer query kind
and day, one for the progress of every (account, region), one for the small key/value entries (account
names, GuardDuty detectors, page sizes).  A chunk is cut into parts under DynamoDB's 400 KB item limit.
A run writes only what it changed (the day it read CPU for, the days it re-read from Cost Explorer), then the
manifest naming every chunk's parts; parts are keyed by the save that wrote them, so a run stopped half-way
leaves the previous manifest and its parts intact.  Parts expire (TTL) a while after their day leaves any
window, and a save deletes the parts it replaced.

A local cache whose recorded manifest stamp differs from the Store's (a cold start, or another container ran
since) loads the chunks whose stamps differ before the run reads anything; the /tmp file stays the fast
layer the run reads and writes.  CPU comes back as float32: a restored sample may differ from the fetched
one in the 7th digit.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from costwatch.errors import ProviderError

from .cache import Cache

TABLE = "cache"
PART_BYTES = 280_000  # raw bytes a part: base64 makes it ~373 KB, under DynamoDB's 400 KB item limit
KEEP_DAYS = 130  # parts expire this long after their day (detection windows reach back 77-91 days)
DAY_S = 86_400


class Mirror:
    """The Store copy of one provider's cache (``scope`` = the provider name); see the module docstring."""

    def __init__(self, store: Any, cache: Cache) -> None:
        self.store = store
        self.cache = cache
        self.key = f"aws/{cache.scope}"
        self.manifest: dict[str, Any] = {}
        self.version: int | None = None
        self.loaded = False
        self.parts_read = 0
        self.parts_written = 0

    # ------------------------------------------------------------------------------------------ load

    def load(self) -> None:
        """Bring the local cache up to the Store's copy (once per process, before anything is read)."""
        if self.loaded:
            return
        rec = self.store.get(TABLE, f"{self.key}/manifest")
        self.manifest, self.version = (dict(rec.doc), rec.version) if rec else ({}, None)
        local = self.cache.get("mirror")
        have: dict[str, Any] = dict(local[0]) if local else {}
        for name, entry in self.manifest.get("chunks", {}).items():
            if have.get("chunks", {}).get(name) != entry:
                self._apply(name, self._read(name, entry))
        self._remember()
        self.loaded = True

    def _apply(self, name: str, blob: bytes) -> None:
        kind, _, rest = name.partition("/")
        if kind == "cpu":
            self.cache.load_cpu_day(int(rest), _arrays(blob))
        elif kind == "ce":
            query, _, day = rest.partition("/")
            ce_kind, _, metric = query.partition(".")
            self.cache.load_ce_day(ce_kind, metric, day, json.loads(zlib.decompress(blob)))
        elif kind == "progress":
            self.cache.load_progress(json.loads(zlib.decompress(blob)))
        elif kind == "kv":
            self.cache.load_kv(json.loads(zlib.decompress(blob)))

    def _part(self, name: str, stamp: str, i: int) -> str:
        return f"{self.key}/{name}/{stamp}/{i}"

    def _read(self, name: str, entry: list[Any]) -> bytes:
        stamp, parts = entry[0], int(entry[1])
        out = bytearray()
        for i in range(parts):
            rec = self.store.get(TABLE, self._part(name, stamp, i))
            if rec is None:
                raise ProviderError(f"aws: the cache copy in the state store lost part {i} of save {stamp}; "
                                    "the next run rebuilds it from AWS")
            out += base64.b64decode(rec.doc["b"])
            self.parts_read += 1
        return bytes(out)

    # ------------------------------------------------------------------------------------------ save

    def save(self, now: pd.Timestamp) -> None:
        """Write the chunks this process changed, then the manifest naming them; drop the replaced parts."""
        if not self.loaded:
            return  # never overwrite the copy with a cache that did not start from it
        dirty = self.cache.take_dirty()
        blobs: dict[str, bytes] = {}
        for day in sorted(dirty["cpu"]):
            blobs[f"cpu/{day}"] = _npz(self.cache.dump_cpu_day(day))
        for kind, metric, day in sorted(dirty["ce"]):
            blobs[f"ce/{kind}.{metric}/{day}"] = zlib.compress(
                json.dumps(self.cache.dump_ce_day(kind, metric, day)).encode())
        if dirty["progress"]:
            blobs["progress"] = zlib.compress(json.dumps(self.cache.dump_progress()).encode())
        if dirty["kv"]:
            blobs["kv"] = zlib.compress(json.dumps(self.cache.dump_kv()).encode())
        if not blobs:
            return
        stamp = uuid.uuid4().hex[:12]
        chunks = dict(self.manifest.get("chunks", {}))
        replaced: list[tuple[str, list[Any]]] = []
        for name, blob in blobs.items():
            expires = _expiry(name)
            parts = list(_cut(blob))
            for i, part in enumerate(parts):
                self.store.put(TABLE, self._part(name, stamp, i), {"b": base64.b64encode(part).decode()},
                               version=None, expires_at=expires)
                self.parts_written += 1
            if name in chunks:
                replaced.append((name, chunks[name]))
            chunks[name] = [stamp, len(parts)]
        for name in [n for n in chunks if (_expiry(n) or now.timestamp()) < now.timestamp()]:
            replaced.append((name, chunks.pop(name)))
        manifest = {"chunks": chunks, "saved_at": now.isoformat()}
        if not self.store.put(TABLE, f"{self.key}/manifest", manifest, version=self.version):
            raise ProviderError("aws: another run saved the cache copy in the state store meanwhile; this run's "
                                "copy was not kept (the next run reads what it lacks from AWS)")
        self.version = 1 if self.version is None else self.version + 1
        self.manifest = manifest
        self._remember()
        for name, (old_stamp, old_parts) in replaced:
            for i in range(int(old_parts)):
                self.store.delete(TABLE, self._part(name, old_stamp, i))

    def _remember(self) -> None:
        """The local cache now holds the manifest's chunks (not marked dirty: it is no change to save)."""
        self.cache.put("mirror", {"chunks": self.manifest.get("chunks", {})}, pd.Timestamp.now(tz="UTC").isoformat(),
                       dirty=False)


def _cut(blob: bytes) -> Iterator[bytes]:
    for i in range(0, max(1, len(blob)), PART_BYTES):
        yield blob[i: i + PART_BYTES]


def _expiry(name: str) -> float | None:
    """When a chunk's parts may go (DynamoDB TTL): ``KEEP_DAYS`` after its day; never for the others."""
    if name.startswith("cpu/"):
        return float(int(name[4:]) * DAY_S + KEEP_DAYS * DAY_S)
    if name.startswith("ce/"):
        return float(pd.Timestamp(name.rsplit("/", 1)[1], tz="UTC").timestamp() + KEEP_DAYS * DAY_S)
    return None


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


__all__ = ["Mirror"]
