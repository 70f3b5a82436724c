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
