"""What the cluster's Python must have before the service starts, checked with the standard
library alone (this runs first in the service job, before anything that could fail to import).

The client ships dstack-ray itself and its small pure-Python dependencies to the cluster (see
`ship.py`); what it cannot always ship — a supported Python and Ray, and the packages with
compiled parts that Ray itself depends on (pydantic, aiohttp, PyYAML) — is looked for here. A
problem is printed as one machine-readable line (`MARK` + JSON) that the client reads from the
job's log, so that it can ship what is missing or name it to the user; the job then exits.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig

from dstack_ray.exec.pyenv import find_uv  # (standard library only, as this module) as node agents look for uv

MARK = "dstack-ray-preflight: "
# Extra packages dstack-ray's processes need on the nodes ("name>=1.2,other"; a custom GPU
# sampler's, say): set on the client, checked there and shipped like the rest.
NEEDS_ENV = "DSTACK_RAY_NEEDS"
TOOLS_ENV = "DSTACK_RAY_TOOLS"  # "uv": look for it too (the client ships it where it can)
EXIT_CODE = 3

# The Python and Ray versions dstack-ray runs on (Ray: [lowest, first untested) minor versions).
# The multi-host tier runs against the lowest and the newest of this range.
PYTHON_MIN = (3, 10)
RAY_RANGE = ((2, 60), (2, 61))
# What the service's processes import from the cluster's own Python: Ray's `default` extra
# brings all three; each has compiled parts, so they are shipped only where the platform matches.
NODE_NEEDS = {"pydantic": "2.7", "PyYAML": "6.0", "aiohttp": "3.8"}


def version_tuple(text: str) -> tuple:
    """`2.14.4` -> (2, 14, 4); stops at the first part that is not a number (`2.60.0rc1` -> (2, 60))."""
    parts = []
    for part in text.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(parts)


def ray_range_text() -> str:
    (low, high) = RAY_RANGE
    return f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"


def platform_tag() -> str:
    """Where a compiled package of this Python also works: interpreter, version and platform."""
    return f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"


def _installed(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def needs(extra: str = "") -> dict:
    """NODE_NEEDS plus the client's `name>=version` list."""
    wanted = dict(NODE_NEEDS)
    for item in filter(None, (part.strip() for part in extra.split(","))):
        name, _, minimum = item.partition(">=")
        wanted[name.strip()] = minimum.strip()
    return wanted


def report(extra: str = "", tools: str = "") -> dict:
    """This Python's versions and what it lacks: {"python", "platform", "ray", "problems", "missing"}."""
    python = ".".join(map(str, sys.version_info[:3]))
    ray_version = _installed("ray")
    problems = []
    if sys.version_info[:2] < PYTHON_MIN:
        problems.append(f"Python {python} is older than {PYTHON_MIN[0]}.{PYTHON_MIN[1]}, the oldest dstack-ray runs on")
    if ray_version is None:
        problems.append("Ray is not installed in this Python")
    elif not RAY_RANGE[0] <= version_tuple(ray_version)[:2] < RAY_RANGE[1]:
        problems.append(f"Ray {ray_version} is outside the versions dstack-ray supports (ray{ray_range_text()})")
    missing = []
    for name, minimum in needs(extra).items():
        found = _installed(name)
        if found is None or (minimum and version_tuple(found) < version_tuple(minimum)):
            missing.append({"name": name, "wanted": f">={minimum}" if minimum else "", "found": found})
    if "uv" in tools.split(",") and find_uv() is None:
        missing.append({"name": "uv", "wanted": "", "found": None, "optional": True})
    return {"python": python, "platform": platform_tag(), "ray": ray_version, "problems": problems, "missing": missing}


def check_or_exit() -> None:
    """Print the report and exit when anything is wrong (the client reads it from the job's log)."""
    found = report(os.environ.get(NEEDS_ENV, ""), os.environ.get(TOOLS_ENV, ""))
    if found["problems"] or found["missing"]:
        print(MARK + json.dumps(found), flush=True)
        sys.exit(EXIT_CODE)


def parse(log: str) -> dict | None:
    """The report in a service job's log, or None."""
    for line in reversed(log.splitlines()):
        at = line.find(MARK)
        if at >= 0:
            try:
                return json.loads(line[at + len(MARK) :])
            except ValueError:
                return None
    return None
