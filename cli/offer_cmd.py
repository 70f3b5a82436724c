"""`dstack-ray offer`: what a task could run on (cluster nodes, autoscaler, catalog)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dstack_ray.plan.properties import format_price, resources_text, spot_policy_text
from dstack_ray_cli.common import AddressOption, connect
from dstack_ray_cli.console import console, properties_table
from dstack_ray_cli.plan_view import print_offers


def offer(
    file: Path = typer.Option(..., "-f", "--file", help="The .dstack.yml file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    max_offers: int = typer.Option(50, "--max-offers", help="Show at most this many offers."),
    profile: Optional[str] = typer.Option(None, "--profile", help="The profile to use."),
    no_profile: bool = typer.Option(False, "--no-profile", help="Don't use any profile."),
    address: Optional[str] = AddressOption,
) -> None:
    """List the offers for a task: matching cluster nodes and node types, then catalog instances."""
    from dstack_ray.api import Client

    cfg = Client.load(file, profile=profile, no_profile=no_profile or None)
    client = connect(address)
    offers = client.offers(cfg)
    if as_json:
        print(
            json.dumps(
                {
                    "cluster": [o.model_dump() for o in offers.cluster],
                    "catalog": [o.model_dump() for o in offers.catalog[:max_offers]],
                    "catalog_message": offers.catalog_message,
                    "no_capacity": offers.no_capacity,
                },
                indent=2,
            )
        )
        return
    console.print(
        properties_table(
            [
                ("Ray cluster", client.address_text()),
                ("Resources", resources_text(cfg)),
                ("Spot policy", spot_policy_text(cfg)),
                ("Max price", format_price(cfg.max_price) if cfg.max_price else "off"),
            ]
        )
    )
    console.print()
    print_offers(offers, max_rows=max_offers)
