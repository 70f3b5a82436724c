"""What never leaves the head in an answer: a run spec without its secrets (env values, the
registry password, tokens written into repo URLs), and URLs with their tokens hidden. The
store keeps the full spec (0600) for the run's own nodes; every API answer and every deleted
record carries only what `public_spec` leaves."""

from __future__ import annotations

import copy
import re
from typing import Any, Dict

HIDDEN = "***"
_URL_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://([^/@\s]*)@")


def redact_url(text: str) -> str:
    """Hide a password or token written into a URL: `https://user:token@host` keeps the user,
    `https://TOKEN@host` (a token alone) hides it all; `ssh://git@host` is left as it is."""

    def hide(match: "re.Match[str]") -> str:
        scheme, userinfo = match.group(1), match.group(2)
        if ":" in userinfo:
            return f"{scheme}://{userinfo.split(':', 1)[0]}:{HIDDEN}@"
        if scheme.lower() in ("http", "https"):
            return f"{scheme}://{HIDDEN}@"
        return match.group(0)

    return _URL_USERINFO.sub(hide, text)


def public_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A run spec (as JSON) without secrets: every env value and the registry password become
    `***`, tokens in repo URLs are hidden. The configuration stays valid, so clients read it as
    the same model."""
    spec = copy.deepcopy(spec)
    configuration = spec.get("configuration") or {}
    env = configuration.get("env")
    if isinstance(env, dict):
        configuration["env"] = {key: HIDDEN for key in env}
    elif isinstance(env, list):  # dstack's list form: KEY=VALUE or KEY
        configuration["env"] = [f"{str(item).split('=', 1)[0]}={HIDDEN}" if "=" in str(item) else item for item in env]
    auth = configuration.get("registry_auth")
    if isinstance(auth, dict) and "password" in auth:
        auth["password"] = HIDDEN
    for repo in configuration.get("repos") or []:
        if isinstance(repo, dict) and isinstance(repo.get("url"), str):
            repo["url"] = redact_url(repo["url"])
    return spec
