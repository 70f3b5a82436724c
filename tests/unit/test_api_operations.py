"""The API is defined once (models/api.py): the Controller implements each operation with the
same arguments, and each transport builds its call from the same table."""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Tuple

import pytest

from dstack_ray.errors import InvalidInput
from dstack_ray.models.api import OPERATIONS


def _controller_class():
    from dstack_ray.runtime.controller import Controller

    return Controller.__ray_metadata__.modified_class


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_the_controller_implements_each_operation_with_its_arguments(name):
    op = OPERATIONS[name]
    method = getattr(_controller_class(), name)
    parameters = [p for p in inspect.signature(method).parameters if p not in ("self", "_ray_trace_ctx")]
    assert sorted(parameters) == sorted([*op.path_names, *op.arguments.model_fields]), name
    path_params = {part[1:-1] for part in op.path.split("/") if part.startswith("{")}
    assert path_params == set(op.path_names) and op.path.startswith("/api/")


def test_routes_are_distinct():
    assert len({(op.method, op.path) for op in OPERATIONS.values()}) == len(OPERATIONS)


class _RecordingHttp:
    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []
        self.url = "http://service"

    def call(self, method: str, path: str, query: Dict[str, Any] = None, body: Any = None, timeout: float = None, missing_ok: bool = False) -> Any:
        self.calls.append((method, path, query, body, timeout, missing_ok))
        return None


def test_the_http_transport_puts_each_argument_where_the_route_takes_it():
    from dstack_ray.api import _ServiceController

    transport = _ServiceController.__new__(_ServiceController)
    transport.http = _RecordingHttp()
    transport.call("list_runs", limit=50, active_only=True)
    transport.call("stop_run", name="my run", abort=True)
    transport.call("wait_run", run_id="abc", version=3, timeout=5.0)
    transport.call("delete_run", name="x")
    assert transport.http.calls == [
        ("GET", "/api/runs", {"limit": 50, "active": "1"}, None, 130, False),
        ("POST", "/api/runs/my%20run/stop", None, {"abort": True}, 130, False),
        ("GET", "/api/runs/abc/wait", {"version": 3, "timeout": 5.0}, None, 65.0, True),
        ("DELETE", "/api/runs/x", {}, None, 130, False),
    ]
    with pytest.raises(Exception):  # an argument the operation does not take
        transport.call("stop_run", name="x", force=True)


def test_a_wrong_argument_is_refused_naming_it():
    from dstack_ray.errors import invalid_fields
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as failed:
        OPERATIONS["list_runs"].arguments.model_validate({"limit": "ten"})
    error = invalid_fields("request", failed.value.errors(include_input=False))
    assert isinstance(error, InvalidInput) and "limit" in str(error) and "ten" not in str(error)


def test_the_actor_transport_passes_every_argument_by_name():
    from dstack_ray.api import _ActorController

    class Method:
        def __init__(self, name: str) -> None:
            self.name = name

        def remote(self, *args: Any, **kwargs: Any) -> Any:
            return (self.name, args, kwargs)

    class Handle:
        def __getattr__(self, name: str) -> Method:
            return Method(name)

    transport = _ActorController.__new__(_ActorController)
    transport.handle = Handle()
    seen: List[Any] = []
    transport._call = lambda method, *args, timeout=None, keywords=None: seen.append((method.name, keywords, timeout))
    transport.call("wait_run", run_id="abc", version=3, timeout=5.0)  # `timeout` is the operation's own argument
    transport.call("metrics", name="x", since_seconds=None)
    assert seen == [("wait_run", {"run_id": "abc", "version": 3, "timeout": 5.0}, 65.0), ("metrics", {"name": "x", "since_seconds": None}, 120)]
