"""The tool-server's cache: SQLite on disk (default) or Redis, with TTL, a size bound and single-flight.

Why: RL calls the tools millions of times with many repeated queries, and web search APIs bill per
call. As in MMSearch-R1 the cache has layers, distinguished by key prefix (the ``layer``):
``text`` (query → results), ``page`` (url → page text), ``summary`` ((pages, query) → summary) and
``image`` (image hash + region → results). Values are JSON strings.

    cache = open_cache("sqlite:///.dmms/cache.db", ttl_s=3600, max_entries=100_000)
    cache = open_cache("redis://127.0.0.1:6379/0", ttl_s=3600, max_entries=100_000, prefix="dmms:")

:class:`CachedCompute` puts a cache in front of a computation, counts hits/misses in Prometheus
and runs concurrent identical computations once (single-flight on the cache key).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from components.search.metrics import Metrics

log = logging.getLogger(__name__)


class Cache(Protocol):
    """A string key → string value store with a TTL and a size bound."""

    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str) -> None: ...
    async def aclose(self) -> None: ...


def cache_key(layer: str, *parts: Any) -> str:
    """A stable key: ``layer:`` + sha256 of the JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{layer}:{hashlib.sha256(blob.encode()).hexdigest()}"


class SQLiteCache:
    """A cache in one SQLite file; expired rows are ignored, the oldest evicted past ``max_entries``.

    Reads run on the caller's thread (a lookup by key is ~5 us). Writes are WRITE-BEHIND: ``set``
    puts the entry in memory (where ``get`` finds it at once) and one writer thread commits
    whatever has gathered in one transaction. Why: a commit on the event loop took ~50 us at the
    median but stalled 5-20 ms once every ~150 writes (the WAL growing, checkpoints and the disk
    behind them: 60 of 8,000 writes over 5 ms here), and every request in flight waited behind
    it; a batch commits many entries for the price of one. Each thread has its own connection
    (WAL: readers never wait for the writer); ``synchronous=NORMAL`` commits without an fsync per
    write — WAL stays consistent on a crash, at worst the last few entries are lost, which a cache
    may (so are entries not yet written). ``len()`` and ``aclose()`` wait for the writer first.
    ``write_behind=False``: ``set`` commits (on the writer thread) before it returns, for a store that
    another process or a later run reads at once (the LLM judge's verdicts)."""

    _EVICT_EVERY = 256

    def __init__(self, path: str | Path, *, ttl_s: int, max_entries: int, write_behind: bool = True):
        self.path = Path(path)
        self.write_behind = write_behind  # False: set() commits before it returns (the LLM judge's verdicts)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._local = threading.local()
        self._conns: list[sqlite3.Connection | _Locked] = []
        self._conns_lock = threading.Lock()  # only guards the list of connections
        self._closed = False
        self._memory: _Locked | None = None
        if str(path) == ":memory:":
            self._memory = _Locked(sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None))
            self._conns.append(self._memory)
        db = self._db()
        db.execute(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            "created REAL NOT NULL, expires REAL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS cache_created ON cache(created)")
        db.execute("CREATE INDEX IF NOT EXISTS cache_expires ON cache(expires)")
        self._since_evict = 0
        # write-behind: key -> (value, created) set but not committed yet; ``_writing``: the batch
        # the writer is committing now (still read from memory until it is in the file)
        self._pending: dict[str, tuple[str, float]] = {}
        self._writing: dict[str, tuple[str, float]] = {}
        self._pending_lock = threading.Lock()
        self._drain_queued = False
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")

    def _db(self) -> sqlite3.Connection | _Locked:
        if self._memory:  # ":memory:" is private to its connection: one connection, under a lock
            return self._memory
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise RuntimeError(f"cache {self.path} is closed")
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            self._local.db = db
            with self._conns_lock:
                self._conns.append(db)
        return db

    def _get(self, key: str) -> str | None:
        with self._pending_lock:
            held = self._pending.get(key) or self._writing.get(key)
        if held is not None:
            return held[0]
        row = self._db().execute("SELECT value, expires FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] < time.time()):
            return None
        return row[0]

    def _set(self, key: str, value: str) -> None:
        """Hold ``key`` in memory and have the writer thread commit it (with whatever else is held)."""
        if not self.write_behind:
            self._writer.submit(self._write, {key: (value, time.time())}).result()
            return
        with self._pending_lock:
            self._pending[key] = (value, time.time())
            if self._drain_queued:
                return
            self._drain_queued = True
        self._writer.submit(self._drain)

    def _drain(self) -> None:
        """(writer thread) Commit everything held, batch after batch, evicting when due."""
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._drain_queued = False
                    return
                batch, self._pending = self._pending, {}
                self._writing = batch
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - a cache that cannot write serves uncached, never fails
                log.warning("cache write of %d entries failed: %s", len(batch), exc)
            finally:
                with self._pending_lock:
                    self._writing = {}

    def _write(self, batch: dict[str, tuple[str, float]]) -> None:
        rows = [(key, value, created, created + self.ttl_s if self.ttl_s else None)
                for key, (value, created) in batch.items()]
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO cache (key, value, created, expires) VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._since_evict += len(rows)
        if self._since_evict >= self._EVICT_EVERY or self.max_entries < self._EVICT_EVERY:
            self._since_evict = 0
            self._evict(db, time.time())

    def _flush(self) -> None:
        """Wait until every entry set so far is in the file (the writer runs one drain at a time)."""
        self._writer.submit(self._drain).result()

    def _evict(self, db: sqlite3.Connection | _Locked, now: float) -> None:
        db.execute("DELETE FROM cache WHERE expires IS NOT NULL AND expires < ?", (now,))
        (count,) = db.execute("SELECT COUNT(*) FROM cache").fetchone()
        if count > self.max_entries:
            db.execute(
                "DELETE FROM cache WHERE key IN (SELECT key FROM cache ORDER BY created LIMIT ?)",
                (count - self.max_entries,),
            )

    def __len__(self) -> int:
        self._flush()
        return self._db().execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    async def get(self, key: str) -> str | None:
        return self._get(key)

    async def set(self, key: str, value: str) -> None:
        self._set(key, value)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._flush)
        self._writer.shutdown(wait=True)
        with self._conns_lock:
            self._closed = True
            for db in self._conns:
                db.close()
            self._conns.clear()


class _Locked:
    """A connection whose statements run one at a time (for the single ``:memory:`` connection)."""

    def __init__(self, db: sqlite3.Connection):
        self._db, self._lock = db, threading.Lock()

    def execute(self, sql: str, params: tuple = ()) -> _Rows:
        with self._lock:
            return _Rows(self._db.execute(sql, params).fetchall())

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Rows:
    def __init__(self, rows: list[tuple]):
        self._rows = rows

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None


class RedisCache:
    """A cache in Redis: SET with EX for the TTL, a sorted set of keys by insertion time for the bound."""

    def __init__(self, url: str, *, ttl_s: int, max_entries: int, prefix: str = "dmms:",
                 timeout_s: float = 5.0):
        import redis.asyncio as aioredis

        self.ttl_s, self.max_entries, self.prefix = ttl_s, max_entries, prefix
        self._redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._order = f"{prefix}__order__"

    async def get(self, key: str) -> str | None:
        return await self._redis.get(self.prefix + key)

    async def set(self, key: str, value: str) -> None:
        full = self.prefix + key
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(full, value, ex=self.ttl_s or None)
            pipe.zadd(self._order, {full: time.time()})
            pipe.zcard(self._order)
            *_, count = await pipe.execute()
        if count > self.max_entries:
            old = await self._redis.zpopmin(self._order, count - self.max_entries)
            if old:
                await self._redis.delete(*[k for k, _ in old])

    async def aclose(self) -> None:
        await self._redis.aclose()


def open_cache(url: str, *, ttl_s: int, max_entries: int, prefix: str = "dmms:") -> Cache:
    """``sqlite:///path`` or ``redis://host:port/db`` → a cache; a ValueError names the bad URL."""
    if url.startswith("sqlite:///"):
        cache: Cache = SQLiteCache(url.removeprefix("sqlite:///"), ttl_s=ttl_s, max_entries=max_entries)
    elif url.startswith(("redis://", "rediss://", "unix://")):
        cache = RedisCache(url, ttl_s=ttl_s, max_entries=max_entries, prefix=prefix)
    else:
        raise ValueError(f"DMMS_TOOLS__CACHE_URL={url!r}: use sqlite:///path or redis://host:port/db")
    log.info("cache: %s (ttl %ss, max %d entries)", url.split("@")[-1], ttl_s, max_entries)
    return cache


class _LeaderCancelled(Exception):
    """The request computing a shared value was cancelled; its followers compute it themselves."""


class CachedCompute:
    """Cache lookup + single-flight + store around an async computation.

    ``await cc.get_or_compute(layer, key, compute)`` returns ``(value, cached)``. A cache that fails
    (Redis down) is logged and counted, and the request is served uncached: the cache never turns a
    good request into an error.
    """

    def __init__(self, cache: Cache, metrics: Metrics):
        self.cache, self.metrics = cache, metrics
        self._inflight: dict[str, asyncio.Future[str]] = {}

    async def _cache_get(self, layer: str, key: str) -> str | None:
        try:
            return await self.cache.get(key)
        except Exception as exc:  # noqa: BLE001 - any cache failure degrades to a miss
            self.metrics.cache_errors.labels(layer).inc()
            log.warning("cache get failed (%s): %s", layer, exc)
            return None

    async def get_or_compute(
        self, layer: str, key: str, compute: Callable[[], Awaitable[str]]
    ) -> tuple[str, bool]:
        value = await self._cache_get(layer, key)
        if value is not None:
            self.metrics.cache_hits.labels(layer).inc()
            return value, True
        self.metrics.cache_misses.labels(layer).inc()
        pending = self._inflight.get(key)
        if pending is not None:
            self.metrics.shared.labels(layer).inc()
            try:
                return await asyncio.shield(pending), False
            except _LeaderCancelled:  # its request ran past its deadline or went away: ours has not
                return await self.get_or_compute(layer, key, compute)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
        except asyncio.CancelledError:
            future.set_exception(_LeaderCancelled())
            future.exception()  # mark retrieved: no "never retrieved" warning when nobody waits
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        try:
            await self.cache.set(key, value)
        except Exception as exc:  # noqa: BLE001
            self.metrics.cache_errors.labels(layer).inc()
            log.warning("cache set failed (%s): %s", layer, exc)
        return value, False
