"""One SQLite cache in front of every teacher: a request answered once is never paid for again."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..config import ConfigError
from ..runs import cache_root
from .base import Teacher, TeacherError, TeacherRequest, TeacherStats, TeacherTaskError, Usage, cache_key

# with a token budget and no cost seen yet, one request goes out alone to price the others
PROBE_WINDOW = 1


def default_cache_path() -> Path:
    return cache_root() / "teacher_cache.sqlite"


class CacheError(ConfigError):
    """The cache's file cannot be used (not a SQLite database, unreadable, a folder): one line naming it."""


@contextmanager
def database_errors(path: Path):
    """SQLite's and the file system's errors as one line that names the cache's file."""
    try:
        yield
    except (sqlite3.DatabaseError, OSError) as exc:
        raise CacheError(f"{path}: cannot use this file as the teacher cache ({exc}); move it away, or set "
                         f"PROTEGE_CACHE_DIR to keep the cache in another folder") from None


class TeacherCache:
    """Key -> reply and its token counts. Every reply is committed on its own as it arrives, in WAL
    mode: a process killed at any moment loses at most the reply being written, and never the file.
    synchronous=NORMAL syncs at checkpoints, not at every commit: a power cut may lose the last few
    replies (paid again on the next run), a killed process loses none."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_cache_path())
        self._lock = threading.Lock()
        with database_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # the first read of the file: a text file fails here
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                             "tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0)")
            self._add_token_columns()
            self._db.commit()

    def _add_token_columns(self) -> None:
        """Caches written before replies carried token counts get the columns (as 0)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(replies)")}
        for column in ("tokens_in", "tokens_out"):
            if column not in have:
                self._db.execute(f"ALTER TABLE replies ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")

    def entry(self, key: str) -> tuple[str, Usage] | None:
        with self._lock, database_errors(self.path):  # a damaged page may show only when it is read
            row = self._db.execute("SELECT reply, tokens_in, tokens_out FROM replies WHERE key = ?",
                                   (key,)).fetchone()
        return (row[0], Usage(row[1], row[2])) if row else None

    def get(self, key: str) -> str | None:
        found = self.entry(key)
        return found[0] if found else None

    def put(self, key: str, reply: str, usage: Usage = Usage()) -> None:
        with self._lock, database_errors(self.path):
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                             (key, reply, usage.tokens_in, usage.tokens_out))
            self._db.commit()

    def close(self) -> None:
        self._db.close()


def affordable(tokens_left: int, tokens_so_far: int, requests_so_far: int, unpriced: int) -> int:
    """How many more requests fit in what is left of a token budget at the mean cost of those so
    far. Until some cost has been seen (no request yet, or a backend that counts no tokens) a request
    has no price, and `unpriced` requests are allowed."""
    if tokens_left <= 0:
        return 0
    if tokens_so_far == 0:
        return unpriced
    return tokens_left * requests_so_far // tokens_so_far


@dataclass
class CachedTeacher:
    """Wraps a backend: cached replies come back free, misses go out in one batch and are stored
    as they arrive (a run killed mid-batch keeps every reply that came back). Within `allowance`,
    requests go out in windows sized to what is left of a token budget."""

    backend: Teacher
    cache: TeacherCache
    options: dict = field(default_factory=dict)
    stats: TeacherStats = field(default_factory=TeacherStats)
    token_limit: int | None = None  # stats.tokens may not pass this; None: no limit

    @property
    def name(self) -> str:
        return self.backend.name

    @contextmanager
    def allowance(self, tokens: int | None):
        """Within the block, no request goes out once `tokens` more have been charged (None: no limit)."""
        before, self.token_limit = self.token_limit, None if tokens is None else self.stats.tokens + tokens
        try:
            yield self
        finally:
            self.token_limit = before

    def complete(self, requests: list[TeacherRequest]) -> list[str | None]:
        keys = [self.key(r) for r in requests]
        replies: list[str | None] = [None] * len(requests)
        start = 0
        while start < len(requests):
            size = self._window(len(requests) - start)
            if size == 0:
                self.stats.over_budget += len(requests) - start
                break
            self._answer(requests, keys, replies, range(start, start + size))
            start += size
        return replies

    def key(self, request: TeacherRequest) -> str:
        """The request's cache key: who answers, what is asked, the options, and the reply's shape where
        the backend asks for one (structured outputs)."""
        shape = getattr(self.backend, "response_format", None)
        return cache_key(self.backend.identity(), request, self.options, shape(request) if shape else None)

    def _window(self, remaining: int) -> int:
        if self.token_limit is None:
            return remaining
        s = self.stats
        unpriced = PROBE_WINDOW if s.requests == 0 else remaining
        return min(remaining, affordable(self.token_limit - s.tokens, s.tokens, s.requests, unpriced))

    def _answer(self, requests: list[TeacherRequest], keys: list[str], replies: list, window: range) -> None:
        """Cached replies of the window are charged as they are; the misses go to the backend."""
        missing = []
        for i in window:
            found = self.cache.entry(keys[i])
            if found is None:
                missing.append(i)
            else:
                replies[i] = found[0]
                self.stats.charge(found[1])
        self.stats.requests += len(window)
        self.stats.paid += len(missing)
        if missing:
            self._ask_backend(requests, keys, replies, missing)

    def _ask_backend(self, requests: list[TeacherRequest], keys: list[str], replies: list, missing: list[int]):
        # backends that keep stats (openai, local) know what the cache cannot see: retries and drops
        before = self.backend.stats.copy() if hasattr(self.backend, "stats") else None
        # the bar closes (and clears its line) even when the backend raises, so an error reads alone
        with tqdm(total=len(missing), desc=f"teacher ({self.backend.name})", unit="req", leave=False,
                  disable=len(missing) < 2) as bar:

            def store(j: int, reply: str | None, usage: Usage = Usage()) -> None:
                bar.update(1)
                if reply is not None:
                    self.cache.put(keys[missing[j]], reply, usage)
                    self.stats.charge(usage)

            fresh = self.backend.complete([requests[i] for i in missing], on_reply=store)
        for i, reply in zip(missing, fresh):
            replies[i] = reply
            self.stats.failed += reply is None
        if before is not None:
            self.stats.add_outcomes(self.backend.stats.minus(before))

    def check_drops(self, used: TeacherStats) -> None:
        """Stop a stage (`used`: what it asked) whose backend dropped most of the replies it was sent:
        the data it would go on with is mostly missing, and such a teacher is broken (a function
        returning no text, an endpoint answering empty replies). One line says how and why."""
        if not used.paid or used.dropped * 2 <= used.paid:
            return
        reasons = ", ".join(f"{why}: {n}" for why, n in used.dropped_why.most_common())
        label = getattr(self.backend, "label", None) or self.backend.identity()
        rule = getattr(self.backend, "reply_rule", "")
        error = TeacherTaskError if getattr(self.backend, "user_code", False) else TeacherError
        raise error(f"teacher {label}: {used.dropped} of {used.paid} replies dropped ({reasons})"
                    + (f"; {rule}" if rule else ""))
