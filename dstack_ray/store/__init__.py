"""Run records (SQLite) and logs (files) on the head node."""

from dstack_ray.store.db import Store, utcnow
from dstack_ray.store.logs import LogGap, LogStore

__all__ = ["LogGap", "LogStore", "Store", "utcnow"]
