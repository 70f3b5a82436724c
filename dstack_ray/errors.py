"""Errors of the public API that a user can act on (the CLI prints them as one line).

The API's refusals are typed once here, each with its HTTP status: the Controller raises them,
the service answers with their status (`{"error", "hint"}`), and both clients (HTTP and actor
handles) raise the same class again, so a caller can tell "no such run" from "run still active".
"""

from typing import Dict, Iterable, Optional, Type


class DstackRayError(Exception):
    """Run not found, cluster unreachable, run still active...; `hint` says what to do."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __reduce__(self):  # keep the hint when Ray carries the error from an actor
        return (type(self), (str(self), self.hint))


class ApiError(DstackRayError):
    """A request the API refuses; `status` is its HTTP status."""

    status = 400


class InvalidInput(ApiError):
    """The request is malformed or names a field wrongly (the message names the field)."""

    status = 400


class Forbidden(ApiError):
    """A request the API never grants (a port the run does not declare, say)."""

    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    """The request does not fit the run's state (deleting an active run, say)."""

    status = 409


class TooLarge(ApiError):
    status = 413


class NotReady(ApiError):
    """The service cannot answer yet (its Controller restarts): ask again shortly."""

    status = 503


API_ERRORS: Dict[int, Type[ApiError]] = {cls.status: cls for cls in (InvalidInput, Forbidden, NotFound, Conflict, TooLarge, NotReady)}


def api_error(status: int, message: str, hint: Optional[str] = None) -> DstackRayError:
    """The error an answer with `status` stands for (a plain DstackRayError for other statuses)."""
    return API_ERRORS.get(status, DstackRayError)(message, hint)


def invalid_fields(what: str, errors: Iterable[dict]) -> InvalidInput:
    """A pydantic validation failure as one InvalidInput naming each field and the rule it
    broke — never the value (it may be a secret)."""
    problems = [f"{'.'.join(str(part) for part in error.get('loc', ())) or what}: {error.get('msg', 'invalid')}" for error in errors]
    return InvalidInput(f"invalid {what}: " + "; ".join(problems[:5]) + (" …" if len(problems) > 5 else ""))
