"""One SQLite cache in front of every teacher: a request answered once is never paid for again."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..runs import cache_root
from .base import Teacher, TeacherRequest, cache_key


def default_cache_path() -> Path:
    return cache_root() / "teacher_cache.sqlite"


class TeacherCache:
    """Key -> reply. WAL mode so that a crash mid-write loses at most the reply being written."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_cache_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, reply))
            self._db.commit()

    def close(self) -> None:
        self._db.close()


@dataclass
class TeacherStats:
    requests: int = 0  # asked by the run, cached or not: what the budget counts
    paid: int = 0  # sent to the backend
    failed: int = 0  # the backend gave nothing usable

    def add(self, other: "TeacherStats") -> None:
        self.requests += other.requests
        self.paid += other.paid
        self.failed += other.failed


@dataclass
class CachedTeacher:
    """Wraps a backend: cached replies come back free, misses go out in one batch and are stored
    as they arrive (a run killed mid-batch keeps every reply that came back)."""

    backend: Teacher
    cache: TeacherCache
    options: dict = field(default_factory=dict)
    stats: TeacherStats = field(default_factory=TeacherStats)

    @property
    def name(self) -> str:
        return self.backend.name

    def complete(self, requests: list[TeacherRequest]) -> list[str | None]:
        keys = [cache_key(self.backend.identity(), r, self.options) for r in requests]
        replies = [self.cache.get(k) for k in keys]
        missing = [i for i, r in enumerate(replies) if r is None]
        self.stats.requests += len(requests)
        self.stats.paid += len(missing)
        # the bar closes (and clears its line) even when the backend raises, so an error reads alone
        with tqdm(total=len(missing), desc=f"teacher ({self.backend.name})", unit="req", leave=False,
                  disable=len(missing) < 2) as bar:

            def store(j: int, reply: str | None) -> None:
                bar.update(1)
                if reply is not None:
                    self.cache.put(keys[missing[j]], reply)

            fresh = self.backend.complete([requests[i] for i in missing], on_reply=store) if missing else []
        for i, reply in zip(missing, fresh):
            replies[i] = reply
            self.stats.failed += reply is None
        return replies
