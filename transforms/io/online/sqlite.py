"""Embedded online store in SQLite, in Feast's SQLite online store layout.

Feature values live in Feast's table `<project>_<view>` (entity_key, feature_name, value,
value_text, vector_value, event_ts, created_ts), so Feast's own `get_online_features` reads them.
Our bookkeeping (the stored window and pane per entity) lives in a separate table, and every
batch is one `BEGIN IMMEDIATE` transaction: atomic, and safe with several writer processes.

A writer that finds the database locked waits in SQLite's busy handler (`busy_timeout`, 5 s),
then retries with backoff (`with_retries`): about 35 s in all before a StoreError. Readers never
wait: in WAL mode they read the last committed state while a write is under way.

Opened `read_only` (readers: `FeatureReader`, `get_features`), the database must exist and hold
the view's tables: nothing is created, and a wrong path or a store written with another spec is a
StoreNotFoundError instead of an empty store that reads as all nulls.
"""

from __future__ import annotations

import os
import sqlite3
import time
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from transforms.io.online.base import (
    OnlineRecord,
    OnlineStore,
    StoredRecord,
    StoreError,
    StoreNotFoundError,
    WriteResult,
    check_complete,
    with_retries,
)
from transforms.io.online.config import SqliteConfig
from transforms.io.online.feast_codec import (
    decode_value,
    entity_key_encoder,
    serialize_entity_key,
    value_encoder,
)
from transforms.records import FeatureRow, ViewLayout
from transforms.spec import FeatureSpecFile

T = TypeVar("T")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _sqlite_ts(millis: int) -> int:
    # Feast's SQLite store registers an adapter that writes timestamps as integer epoch seconds,
    # and a "timestamp" converter that reads them back the same way.
    return millis // 1000


def _is_permanent(err: BaseException) -> bool:
    """Only a busy/locked database is worth waiting for; a missing table, a read-only file or a
    full disk will not fix itself."""
    name = getattr(err, "sqlite_errorname", "")
    if name:
        return not name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return "locked" not in str(err) and "busy" not in str(err)


class SqliteOnlineStore(OnlineStore):
    # One transaction per 20,000 rows: a bulk write touches pages all over the B-trees, and
    # each commit writes its dirty pages to the WAL again; 50,000 entities x 7 features in random
    # entity order, fresh tables: 1.5 s of CPU in batches of 500, 0.8 s in batches of 20,000.
    WRITE_BATCH_ROWS = 20_000

    def __init__(self, url: Union[str, SqliteConfig], spec: FeatureSpecFile,
                 views: Optional[dict[str, ViewLayout]] = None, busy_timeout: float = 5.0,
                 read_only: bool = False):
        super().__init__(spec, views)
        self.path = (url if isinstance(url, SqliteConfig) else SqliteConfig.from_url(url)).path
        self.read_only = read_only
        self._meta = _quote(f"{self.project}__windows")
        self._codecs: dict[str, _ViewCodec] = {}
        if read_only:
            self._conn = self._open_existing()
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # A DoFn instance serves one bundle at a time, but Beam may run bundles (and teardown)
            # on different threads of the worker.
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise StoreError(f"--online_store: cannot open SQLite database {self.path!r}: {err}") from err
        # Switching to WAL needs a moment without other writers, like creating the tables.
        self._retrying(self._create_tables)

    def _open_existing(self) -> sqlite3.Connection:
        """A reader's connection: mode=rw never creates the file (a typo'd path must not leave an
        empty database behind), and the tables are checked, not created."""
        if not os.path.isfile(self.path):
            raise StoreNotFoundError(f"--online_store: no SQLite database at {self.path!r}")
        try:
            conn = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=rw", uri=True,
                                   isolation_level=None, check_same_thread=False)
            self._tables = _tables(conn)
        except sqlite3.Error as err:
            raise StoreNotFoundError(f"--online_store: {self.path!r} is not a readable SQLite database: {err}") from err
        return conn

    def _check_view(self, view: str) -> None:
        if not self.read_only:
            return
        needed = (f"{self.project}__windows", f"{self.project}_{view}")
        if not set(needed) <= self._tables:  # look again: a writer may have created them since
            self._tables = _tables(self._conn)
        missing = [name for name in needed if name not in self._tables]
        if missing:
            projects = sorted(t[:-len("__windows")] for t in self._tables if t.endswith("__windows"))
            raise StoreNotFoundError(
                f"--online_store: {self.path!r} has no table {missing[-1]!r} (view {view!r} of project "
                f"{self.project!r}): written with another spec? (projects in it: {', '.join(projects) or 'none'})")

    def __repr__(self) -> str:
        return f"SqliteOnlineStore({self.path!r}, project={self.project!r})"

    def _retrying(self, call: Callable[[], T]) -> T:
        """`call` under with_retries while the database is locked; any other SQLite error comes
        out at once as a StoreError naming the file."""
        return with_retries(call, (sqlite3.Error,), f"SQLite {self.path}", give_up=_is_permanent,
                            on_retry=self._retried)

    def _table(self, view: str) -> str:
        return _quote(f"{self.project}_{view}")

    def _create_tables(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # A writer's own settings (per connection, nothing stored in the file). A bulk write
        # touches pages all over the tables' B-trees: a page cache of up to 64 MB (grown only as
        # used; SQLite's default is 2 MB) keeps them, and checkpointing every 10,000 WAL pages
        # (~40 MB, default 1,000) copies a page rewritten by several batches back once. Together
        # ~10 % less CPU per backfill write. Durability: with synchronous=NORMAL the WAL is synced at
        # checkpoints, so a power loss (not a process crash) may undo commits since the last one.
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        for view in self.views:
            table = self._table(view)
            # Exactly Feast's statements (feast/infra/online_stores/sqlite.py, update()).
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (entity_key BLOB, feature_name TEXT, value BLOB, "
                "value_text TEXT, vector_value BLOB, event_ts timestamp, created_ts timestamp,  "
                "PRIMARY KEY(entity_key, feature_name))"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_quote(f'{self.project}_{view}_ek')} ON {table} (entity_key);"
            )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._meta} (view TEXT, entity_key BLOB, "
            "window_start INTEGER, window_end INTEGER, pane_index INTEGER, written_at INTEGER, "
            "PRIMARY KEY(view, entity_key))"
        )

    def write(self, rows: Sequence[FeatureRow]) -> WriteResult:
        if not rows:
            return WriteResult(0, 0)
        return self._retrying(lambda: self._write_once(rows))

    def _codec(self, view: str) -> _ViewCodec:
        codec = self._codecs.get(view)
        if codec is None:
            codec = self._codecs[view] = _ViewCodec(self.layout(view), self._table(view))
        return codec

    def _write_once(self, rows: Sequence[FeatureRow]) -> WriteResult:
        """One transaction per batch: the stored (window end, pane) of every key in one query per
        900 keys, the rows judged in order against it as one by one would be (older windows and
        the same pane again are stale), then only each key's last winner written, in one
        statement per table, in primary key order (neighbouring rows share B-tree pages)."""
        conn = self._conn
        written = stale = 0
        now_ms = int(time.time() * 1000)
        created = _sqlite_ts(now_ms)
        codecs: dict[str, _ViewCodec] = {}
        keyed = []
        for row in rows:
            codec = codecs.get(row.view)
            if codec is None:
                codec = codecs[row.view] = self._codec(row.view)
            keyed.append((row, codec, codec.key(row.entity)))
        conn.execute("BEGIN IMMEDIATE")
        try:
            current: dict[tuple[str, bytes], tuple[int, int]] = {}
            keys_by_view: dict[str, list[bytes]] = {}
            for row, _, key in keyed:
                keys_by_view.setdefault(row.view, []).append(key)
            for view, keys in keys_by_view.items():
                unique = list(dict.fromkeys(keys))
                for i in range(0, len(unique), self._CHUNK):
                    chunk = unique[i:i + self._CHUNK]
                    for key, end, pane in conn.execute(
                            f"SELECT entity_key, window_end, pane_index FROM {self._meta} "
                            f"WHERE view = ? AND entity_key IN ({','.join('?' * len(chunk))})", (view, *chunk)):
                        current[(view, key)] = (end, pane)
            winners: dict[tuple[str, bytes], tuple[FeatureRow, _ViewCodec, bytes]] = {}
            for row, codec, key in keyed:
                stored = current.get((row.view, key))
                # Skip older windows, and the exact same pane (a replay leaves the same state).
                if stored is not None and (row.window_end_ms, row.pane_index) <= stored:
                    stale += 1
                    continue
                current[(row.view, key)] = (row.window_end_ms, row.pane_index)
                winners[(row.view, key)] = (row, codec, key)
                written += 1
            ordered = sorted(winners.items(), key=_first)
            conn.executemany(
                f"INSERT OR REPLACE INTO {self._meta} VALUES (?, ?, ?, ?, ?, ?)",
                [(row.view, key, row.window_start_ms, row.window_end_ms, row.pane_index, now_ms)
                 for _, (row, _, key) in ordered],
            )
            values_by_view: dict[str, list[list[Any]]] = {}
            for _, (row, codec, key) in ordered:
                values = values_by_view.get(row.view)
                if values is None:
                    values = values_by_view[row.view] = []
                values.append(codec.values(key, row.features, _sqlite_ts(row.window_end_ms), created))
            for view, values in values_by_view.items():
                codecs[view].upsert(conn, values)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (a full disk, an I/O error): a second ROLLBACK
            # would raise "no transaction is active" and hide the real error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return WriteResult(written, stale)

    # SQLite's default limit on bound parameters is 32766 (999 before 3.32): stay well below.
    _CHUNK = 900

    def read_stored(self, view: str, entities: Sequence[Any]) -> list[Optional[StoredRecord]]:
        layout = self.layout(view)
        self._check_view(view)
        keys = [serialize_entity_key([layout.join_key], [e], [layout.key_dtype]) for e in entities]
        metas: dict[bytes, tuple] = {}
        values: dict[bytes, dict[str, Optional[bytes]]] = {}
        for i in range(0, len(keys), self._CHUNK):
            chunk = list(dict.fromkeys(keys[i:i + self._CHUNK]))
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                    f"SELECT entity_key, window_start, window_end, pane_index, written_at FROM {self._meta} "
                    f"WHERE view = ? AND entity_key IN ({marks})", (view, *chunk)):
                metas[row[0]] = row[1:]
            for key, name, value in self._conn.execute(
                    f"SELECT entity_key, feature_name, value FROM {self._table(view)} WHERE entity_key IN ({marks})",
                    chunk):
                values.setdefault(key, {})[name] = value
        now_ms = int(time.time() * 1000)
        out: list[Optional[StoredRecord]] = []
        for key in keys:
            meta = metas.get(key)
            # Honour ttl like Redis key expiry: counted from the last write.
            if meta is None or (layout.ttl_seconds and meta[3] + layout.ttl_seconds * 1000 < now_ms):
                out.append(None)
                continue
            stored = values.get(key, {})
            if self.read_only:
                check_complete(layout, stored, repr(self.path))
            features = {name: decode_value(stored.get(name)) for name in layout.feature_names}
            out.append(StoredRecord(OnlineRecord(meta[0], meta[1], meta[2], features), meta[3]))
        return out

    def close(self) -> None:
        self._conn.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _first(item: tuple) -> Any:
    return item[0]


class _ViewCodec:
    """What a write needs of one view, built once per store: the entity key and value encoders,
    the features in primary key order (by name) and the upsert statements.

    The upsert takes the rows of several entities per statement (SQLite's per-statement and the
    sqlite3 module's per-call costs are paid once per `ENTITIES` entities, not once per row)."""

    ENTITIES = 16  # x features x 6 parameters: far below SQLite's limit on bound parameters

    def __init__(self, layout: ViewLayout, table: str):
        self.key = entity_key_encoder(layout.join_key, layout.key_dtype)
        order = sorted(range(len(layout.feature_names)), key=lambda i: layout.feature_names[i])
        self._columns = tuple(
            (i, layout.feature_names[i], value_encoder(layout.value_types[i])) for i in order)
        head = f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, created_ts) VALUES "
        tail = (" ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
                "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts")
        rows = ",".join(["(?, ?, ?, ?, ?, ?)"] * len(self._columns))
        self._one = head + rows + tail
        self._many = head + ",".join([rows] * self.ENTITIES) + tail

    def values(self, key: bytes, features: Sequence[Any], event_ts: int, created: int) -> list[Any]:
        """The parameters of one entity's feature rows, in primary key order."""
        out: list[Any] = []
        for i, name, encode in self._columns:
            value = features[i]
            # Feast fills value_text with str() of scalar values (helpers.extract_text_and_num).
            text = None if value is None or isinstance(value, (list, tuple)) else str(value)
            out += (key, name, encode(value), text, event_ts, created)
        return out

    def upsert(self, conn: sqlite3.Connection, entities: list[list[Any]]) -> None:
        """Write the rows of `entities` (each the output of `values`), in their order."""
        step = self.ENTITIES
        full = len(entities) - len(entities) % step
        if full:
            conn.executemany(self._many, [list(chain.from_iterable(entities[i:i + step]))
                                          for i in range(0, full, step)])
        if full < len(entities):
            conn.executemany(self._one, entities[full:])


def remove_database(url: str) -> None:
    path = SqliteConfig.from_url(url).path
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
