"""The dstack-ray service: one long-lived process on the head node that owns the Controller
(and through it the supervisors and node agents) and serves the HTTP API the CLI talks to.

On a cluster it runs as one Ray Job (`dstack-ray` in the dashboard's Jobs tab), so every actor
and task of every run belongs to a live job. `server.py` is the process; `client.py` the HTTP
side a client uses, and how a client finds (or starts) the service from a Ray address.
"""

SERVICE_PORT_ENV = "DSTACK_RAY_SERVICE_PORT"
DEFAULT_SERVICE_PORT = 8270
SERVICE_PYTHON_ENV = "DSTACK_RAY_SERVICE_PYTHON"  # the head's Python for the service job
JOB_NAME = "dstack-ray"
# The HTTP API's version: a client and a service of different versions never work together.
API_VERSION = 1
SERVICE_METADATA_KEY = "dstack_ray_service_port"  # Ray Job metadata: the service's port
SERVICE_HOST_ENV = "DSTACK_RAY_SERVICE_HOST"  # where a service a client starts listens (default: auto)
ALLOWED_HOSTS_ENV = "DSTACK_RAY_SERVICE_ALLOWED_HOSTS"  # more names a browser may use for the service
PAYLOAD_LIMIT_ENV = "DSTACK_RAY_PAYLOAD_LIMIT"  # the files and repo one run may ship (0: no limit)
DEFAULT_PAYLOAD_LIMIT = 64 << 20
AUTO = "auto"  # listen where the cluster's dashboard listens (service/exposure.py)
OPEN_WARNING = (
    "the dstack-ray service at %s is reachable beyond its host and Ray's token authentication is off:"
    " anyone who reaches it can run commands on the cluster (as anyone who reaches Ray's Jobs API can)."
    " Turn Ray's token authentication on (RAY_AUTH_MODE=token) or keep the dashboard on localhost"
)


def payload_limit(environ=None) -> int:
    """The bytes of files and repo one run may ship, as the client checks it and the service
    sizes its requests by it (0: no limit; a malformed value: the default)."""
    import os

    text = ((environ if environ is not None else os.environ).get(PAYLOAD_LIMIT_ENV) or "").strip()
    return int(text) if text.isdigit() else DEFAULT_PAYLOAD_LIMIT
