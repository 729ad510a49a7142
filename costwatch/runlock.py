"""The run lock: one ``costwatch run`` at a time per state store, and no wait after a crash.

The lock is a record in the state store written insert-if-absent with a TTL, so it works the same in SQLite
and DynamoDB, and a run that dies anywhere releases it by expiry.  Waiting for that expiry after a
``kill -9`` (or an OOM kill) would skip every run for ``LOCK_SECONDS``: so the lock records who holds it
(pid, host, boot id, and the process's start time), and a run on the same host whose holder is provably
gone (same boot and no such process, or the pid now belongs to a process started later) takes it over at
once, with a conditional write so that two runs cannot both take it.  A holder on another host (another
Lambda sandbox, another machine) cannot be checked and is waited for.  The outbox's conditional writes
prevent double sends whatever the lock says; the lock saves a second run from fetching for nothing.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import CostwatchError
from .state import Store

LOCK_SECONDS = 15 * 60  # longest run we expect; a crashed run's lock on another host lapses after this
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class RunLocked(CostwatchError):
    """Another run holds the state lock (an overlapping cron job, or a retried Lambda invocation)."""


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), to tell a reused pid
    from the holder itself; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def holder_doc(owner: str) -> dict[str, Any]:
    """What the lock records about this process."""
    pid = os.getpid()
    return {"owner": owner, "since": time.time(), "pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "started": _started(pid)}


def holder_is_dead(doc: dict[str, Any]) -> bool:
    """Provably gone: recorded on this host in this boot, and its pid is free or now a different process."""
    pid, boot = doc.get("pid"), _boot_id()
    if not isinstance(pid, int) or doc.get("host") != socket.gethostname() or boot is None \
            or doc.get("boot_id") != boot:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    started = _started(pid)
    return started is not None and doc.get("started") is not None and started != doc.get("started")


def describe(doc: dict[str, Any]) -> str:
    since = doc.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, int | float) else "?"
    return f"pid {doc.get('pid', '?')} on host {doc.get('host', '?')}, since {when}"


def acquire_lock(store: Store, owner: str, seconds: float = LOCK_SECONDS) -> bool:
    """Take the lock: free, lapsed, ours (a Lambda retry has the same request id), or its holder is dead on
    this host.  False when a live (or uncheckable) holder has it."""
    doc = holder_doc(owner)
    if store.put("lock", "run", doc, version=None, expires_at=time.time() + seconds):
        return True
    held = store.get("lock", "run")
    if held is None:  # released between the two calls: try once more
        return store.put("lock", "run", doc, version=None, expires_at=time.time() + seconds)
    if held.doc.get("owner") != owner and not holder_is_dead(held.doc):
        return False
    return store.put("lock", "run", doc, version=held.version, expires_at=time.time() + seconds)


def require_lock(store: Store, owner: str) -> None:
    """:func:`acquire_lock`, or :class:`RunLocked` naming the holder."""
    if acquire_lock(store, owner):
        return
    held = store.get("lock", "run")
    who = describe(held.doc) if held is not None else "a run that just finished"
    raise RunLocked(f"another costwatch run holds the state lock ({who}); this one did nothing. A run that died on "
                    f"this host is taken over at once; one elsewhere lapses after {LOCK_SECONDS // 60} minutes")


def release_lock(store: Store, owner: str) -> None:
    rec = store.get("lock", "run")
    if rec is not None and rec.doc.get("owner") == owner:
        store.delete("lock", "run")


__all__ = ["LOCK_SECONDS", "RunLocked", "acquire_lock", "describe", "holder_is_dead", "release_lock", "require_lock"]
