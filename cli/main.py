"""Entry point of the `dstack-ray` command: sub-commands and the error boundary."""

from __future__ import annotations

import logging
import os
import sys

# While the CLI's models are built at import, pydantic would look for plugins in every installed
# distribution's metadata (tens of ms with Ray's dependencies): the CLI uses none. Restored in
# main(), so processes the CLI starts (the local head) get the user's environment.
_PYDANTIC_PLUGINS = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"

import importlib  # noqa: E402
from typing import Any, Optional  # noqa: E402

import typer  # noqa: E402

from dstack_ray.config.errors import ConfigurationError  # noqa: E402
from dstack_ray.errors import DstackRayError  # noqa: E402
from dstack_ray_cli.console import CLIError, err_console, print_error  # noqa: E402

# Each verb's module, loaded only for that verb: `ps` does not import what `apply` needs (the
# configuration's models, the planner) — a fresh `ps` is mostly its imports.
COMMANDS = {
    "apply": ("apply_cmd", "apply"),
    "ps": ("runs_cmd", "ps"),
    "logs": ("runs_cmd", "logs"),
    "stop": ("runs_cmd", "stop"),
    "delete": ("runs_cmd", "delete"),
    "events": ("runs_cmd", "events"),
    "attach": ("runs_cmd", "attach_run"),
    "metrics": ("runs_cmd", "metrics"),
    "offer": ("offer_cmd", "offer"),
}
GROUPS = {"server": "server_cmd", "config": "config_cmd", "cluster": "cluster_cmd"}


def _module(name: str) -> Any:
    return importlib.import_module(f"dstack_ray_cli.{name}")


def build_app(only: Optional[str] = None) -> typer.Typer:
    """The command: every verb, or (`only`) just the one being run."""
    app = typer.Typer(
        name="dstack-ray",
        help="Run dstack tasks (.dstack.yml) on Ray clusters.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _group() -> None:  # a group even with one verb registered: `dstack-ray ps`, not `dstack-ray`
        pass

    for verb, (module, function) in COMMANDS.items():
        if only in (None, verb):
            settings = {"context_settings": {"allow_interspersed_args": False}} if verb == "apply" else {}
            app.command(name=verb, **settings)(getattr(_module(module), function))
    for group, module in GROUPS.items():
        if only in (None, group):
            app.add_typer(_module(module).app, name=group)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole command (tests, documentation tools)
        return build_app()
    raise AttributeError(name)


def main() -> None:
    """Run the CLI; every error a user can cause ends as one readable line, never a traceback.

    Usage errors are click's (standalone mode); our own errors propagate here.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if _PYDANTIC_PLUGINS is None:
        del os.environ["PYDANTIC_DISABLE_PLUGINS"]
    else:
        os.environ["PYDANTIC_DISABLE_PLUGINS"] = _PYDANTIC_PLUGINS
    verb = next((arg for arg in sys.argv[1:2] if arg in COMMANDS or arg in GROUPS), None)
    try:
        build_app(verb)()
    except ConfigurationError as e:
        print_configuration_error(e)
        sys.exit(1)
    except CLIError as e:
        print_error(e.message, e.hint)
        sys.exit(e.exit_code)
    except DstackRayError as e:
        print_error(str(e), e.hint)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("Interrupted")
        sys.exit(130)
    except Exception as e:
        if os.environ.get("DSTACK_RAY_DEBUG", "") not in ("", "0"):
            raise
        print_error(
            f"unexpected {type(e).__name__}: {e}",
            "this is a bug in dstack-ray; rerun with DSTACK_RAY_DEBUG=1 to see where it happened",
        )
        sys.exit(2)


def print_configuration_error(e: ConfigurationError) -> None:
    if len(e.issues) == 1:
        err_console.print("[red]Error:[/] ", end="")
        err_console.print(str(e), markup=False)
        return
    err_console.print(f"[red]Error:[/] {len(e.issues)} problems in the configuration")
    err_console.print(str(e), markup=False)


if __name__ == "__main__":
    main()
