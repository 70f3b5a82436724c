"""`dstack-ray config validate|schema`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dstack_ray.config import load_configuration
from dstack_ray.config.checks import check_submittable
from dstack_ray.config.schema import configuration_schema
from dstack_ray_cli.console import console, properties_table
from dstack_ray_cli.properties import run_properties

app = typer.Typer(help="Check task configurations and get their JSON schema.", no_args_is_help=True)


@app.command()
def validate(
    file: Path = typer.Option(..., "-f", "--file", help="The .dstack.yml file to check."),
    profile: Optional[str] = typer.Option(None, "--profile", help="The profile to merge in."),
    no_profile: bool = typer.Option(False, "--no-profile", help="Don't merge any profile."),
    as_json: bool = typer.Option(False, "--json", help="Print the normalised configuration as JSON."),
) -> None:
    """Check a configuration as dstack would and print what it means, or every error in it."""
    cfg = load_configuration(file, profile=profile, no_profile=no_profile or None)
    check_submittable(cfg)
    if as_json:
        data = cfg.model_dump(mode="json")
        if data.get("registry_auth"):
            data["registry_auth"]["password"] = "***"
        data["env"] = {key: "***" for key in data.get("env", {})}
        console.print_json(json.dumps(data))
        return
    console.print(f"[green]✓[/] {file} is a valid task configuration")
    console.print(properties_table([("Configuration", str(file)), ("Name", cfg.name or "(generated)")] + run_properties(cfg)))


@app.command()
def schema(
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to this file instead of stdout."),
) -> None:
    """Print the JSON Schema of task configurations (for editor completion and checks)."""
    text = json.dumps(configuration_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
        console.print(f"Wrote {output}")
    else:
        print(text)
