"""Shared test set-up. Ray runs at most once at a time: each package that needs it owns one
cluster (package-scoped fixtures), so packages run one after another."""

import os

# Tests talk to clusters they start themselves; one test turns token auth on explicitly.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
