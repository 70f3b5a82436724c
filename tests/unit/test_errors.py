"""The API's typed refusals: one status per kind, the same class on both sides of the wire."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from dstack_ray.errors import API_ERRORS, Conflict, DstackRayError, InvalidInput, NotFound, NotReady, TooLarge, api_error, invalid_fields
from dstack_ray.models import RunSpec


def test_each_kind_has_its_status_and_comes_back_from_it():
    assert {cls: cls.status for cls in (InvalidInput, NotFound, Conflict, TooLarge, NotReady)} == {
        InvalidInput: 400, NotFound: 404, Conflict: 409, TooLarge: 413, NotReady: 503,
    }
    for status, cls in API_ERRORS.items():
        error = api_error(status, "message", "hint")
        assert type(error) is cls and str(error) == "message" and error.hint == "hint"
    other = api_error(502, "bad gateway")
    assert type(other) is DstackRayError and other.hint is None


def test_an_error_keeps_its_hint_across_pickling_as_ray_carries_it_from_an_actor():
    error = pickle.loads(pickle.dumps(Conflict("run x is active", hint="`dstack-ray stop x`")))
    assert type(error) is Conflict and str(error) == "run x is active" and error.hint == "`dstack-ray stop x`"


def test_an_invalid_spec_names_its_fields_and_never_their_values():
    with pytest.raises(ValidationError) as failed:
        RunSpec.model_validate({"run_name": "xx", "configuration": {"type": "task", "commands": ["true"], "env": {"API_KEY": 12}}, "args": "hunter2-secret"})
    error = invalid_fields("run spec", failed.value.errors(include_input=False))
    assert isinstance(error, InvalidInput) and str(error).startswith("invalid run spec: ")
    assert "args" in str(error) and "hunter2-secret" not in str(error)
