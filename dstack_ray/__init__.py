"""dstack-ray: run dstack task configurations (`.dstack.yml`) on Ray clusters.

`from dstack_ray import Client` is the Python API; the configuration layer is `dstack_ray.config`.
Heavy modules (Ray) are imported on first use, so the CLI and the process guard start fast.
"""

from __future__ import annotations  # no `typing` import: the guard imports this package

__version__ = "0.1.0"
__all__ = ["Client", "Run", "DstackRayError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "Run", "DstackRayError"):
        from dstack_ray import api

        return getattr(api, name)
    raise AttributeError(name)
