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

import typer  # noqa: E402

from dstack_ray.errors import DstackRayError  # noqa: E402
from dstack_ray.config import ConfigurationError
from dstack_ray_cli import apply_cmd, config_cmd, offer_cmd, runs_cmd, server_cmd
from dstack_ray_cli import cluster_cmd
from dstack_ray_cli.console import CLIError, err_console, print_error

app = typer.Typer(
    name="dstack-ray",
    help="Run dstack tasks (.dstack.yml) on Ray clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(context_settings={"allow_interspersed_args": False})(apply_cmd.apply)
app.command()(runs_cmd.ps)
app.command()(runs_cmd.logs)
app.command()(runs_cmd.stop)
app.command()(runs_cmd.delete)
app.command()(runs_cmd.events)
app.command(name="attach")(runs_cmd.attach_run)
app.command()(runs_cmd.metrics)
app.command()(offer_cmd.offer)
app.add_typer(server_cmd.app, name="server")
app.add_typer(config_cmd.app, name="config")
app.add_typer(cluster_cmd.app, name="cluster")


def main() -> None:
    """Run the CLI; every error a user can cause ends as one readable line, never a traceback.

    Usage errors are click's (standalone mode); our own errors propagate here.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if _PYDANTIC_PLUGINS is None:
        del os.environ["PYDANTIC_DISABLE_PLUGINS"]
    else:
        os.environ["PYDANTIC_DISABLE_PLUGINS"] = _PYDANTIC_PLUGINS
    try:
        app()
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
