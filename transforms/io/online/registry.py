"""Opening an online store from its URL: the scheme picks the backend (imported only when used,
so SQLite users need no Redis client and the reverse)."""

from __future__ import annotations

from typing import Optional

from transforms.io.online.base import OnlineStore
from transforms.io.online.config import RedisConfig, store_config
from transforms.records import ViewLayout
from transforms.spec import FeatureSpecFile


def open_online_store(
    url: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None, read_only: bool = False
) -> OnlineStore:
    """sqlite:///path.db (embedded default) | redis://[user:password@]host:port/db | rediss://...

    `read_only`: for readers; creates nothing, and a missing database or a view the store does not
    hold raises StoreNotFoundError."""
    config = store_config(url)
    if isinstance(config, RedisConfig):
        from transforms.io.online.redis import RedisOnlineStore

        return RedisOnlineStore(config, spec, views, read_only=read_only)
    from transforms.io.online.sqlite import SqliteOnlineStore

    return SqliteOnlineStore(config, spec, views, read_only=read_only)
