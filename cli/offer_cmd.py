"""`dstack-ray offer`: what a task could run on (cluster nodes, autoscaler, catalog)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import typer
from rich.markup import escape
from rich.table import Table

from dstack_ray.config import TaskConfiguration, parse_configuration
from dstack_ray.plan.offers import Offer
from dstack_ray_cli.apply_cmd import apply_overrides, profile_overrides, spot_option
from dstack_ray_cli.common import AddressOption, connect
from dstack_ray_cli.console import CLIError, console, properties_table
from dstack_ray_cli.plan_view import print_offers
from dstack_ray_cli.properties import format_price, resources_text, spot_policy_text

GROUP_FIELDS = ("gpu", "backend", "region", "count")


def _gpu_of(offer: Offer) -> Tuple[str, int]:
    """(GPU name, count) of an offer; ("-", 0) without GPUs."""
    if not offer.shape.gpu_count:
        return "-", 0
    return offer.shape.gpu_name or "gpu", offer.shape.gpu_count


def parse_group_by(value: Optional[str]) -> List[str]:
    """dstack's `--group-by gpu[,backend[,region]][,count]`: gpu first, the rest optional."""
    if value is None:
        return []
    fields = [f.strip() for f in value.split(",") if f.strip()]
    if not fields or fields[0] != "gpu" or any(f not in GROUP_FIELDS for f in fields) or len(set(fields)) != len(fields):
        raise CLIError(f"--group-by {value}: use gpu, optionally followed by backend, region and count", "e.g. --group-by gpu,backend")
    if "region" in fields and "backend" not in fields:
        raise CLIError("--group-by region needs backend too", "e.g. --group-by gpu,backend,region")
    return fields


def grouped(offers: List[Offer], fields: List[str]) -> List[Dict[str, object]]:
    groups: Dict[Tuple, Dict[str, object]] = {}
    for offer in offers:
        name, count = _gpu_of(offer)
        key = tuple(
            {"gpu": name, "backend": offer.backend.split(" (")[0], "region": offer.region or "-", "count": count}[f] for f in fields
        )
        group = groups.setdefault(key, {**dict(zip(fields, key)), "offers": 0, "prices": []})
        group["offers"] = int(group["offers"]) + 1  # type: ignore[call-overload]
        if offer.price is not None:
            group["prices"].append(offer.price)  # type: ignore[union-attr]
    rows = []
    for group in groups.values():
        prices = group.pop("prices")
        group["price"] = (f"${min(prices):g}..${max(prices):g}" if min(prices) != max(prices) else f"${prices[0]:g}") if prices else "-"  # type: ignore[arg-type]
        rows.append(group)
    return rows


def offer(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="A .dstack.yml whose resources to match (default: dstack's default resources)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", metavar="SPEC", help="GPU spec, e.g. H100:8 or 24GB.."),
    cpu: Optional[str] = typer.Option(None, "--cpu", metavar="SPEC", help="CPU spec, e.g. 4.. or arm:8"),
    memory: Optional[str] = typer.Option(None, "--memory", metavar="RANGE", help="Memory, e.g. 16GB.."),
    disk: Optional[str] = typer.Option(None, "--disk", metavar="RANGE", help="Disk, e.g. 100GB.."),
    backend: List[str] = typer.Option([], "-b", "--backend", help="Only these backends. Repeatable."),
    region: List[str] = typer.Option([], "-r", "--region", help="Only these regions. Repeatable."),
    spot: bool = typer.Option(False, "--spot", help="Spot offers only."),
    on_demand: bool = typer.Option(False, "--on-demand", help="On-demand offers only."),
    spot_auto: bool = typer.Option(False, "--spot-auto", help="Spot or on-demand."),
    spot_policy: Optional[str] = typer.Option(None, "--spot-policy", help="spot, on-demand or auto."),
    max_price: Optional[float] = typer.Option(None, "--max-price", help="Max price per hour."),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="Group offers: gpu[,backend[,region]][,count]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    max_offers: int = typer.Option(50, "--max-offers", help="Show at most this many offers."),
    profile: Optional[str] = typer.Option(None, "--profile", help="The profile to use."),
    no_profile: bool = typer.Option(False, "--no-profile", help="Don't use any profile."),
    address: Optional[str] = AddressOption,
) -> None:
    """List offers, as `dstack offer` (`dstack-ray offer --gpu H100:8`, or `-f` for a task):
    matching cluster nodes and autoscaler node types, then catalog instances."""
    from dstack_ray.api import Client

    fields = parse_group_by(group_by)
    if file is not None:
        cfg = Client.load(file, profile=profile, no_profile=no_profile or None)
    else:
        cfg = parse_configuration({"type": "task", "commands": ["true"]})
    profile_fields = profile_overrides(backend, region, spot_option(spot, on_demand, spot_auto, spot_policy), max_price, None, False)
    cfg = apply_overrides(cfg, gpu, cpu, memory, disk, None, None, None, profile_fields)
    client = connect(address)
    offers = client.offers(cfg)
    every = offers.all
    if as_json:
        print(json.dumps(_json(cfg, offers.all[:max_offers], len(every), fields, offers.catalog_message, offers.no_capacity), indent=2))
        return
    console.print(
        properties_table(
            [
                ("Ray cluster", client.address_text()),
                ("Resources", resources_text(cfg)),
                ("Spot policy", spot_policy_text(cfg)),
                ("Max price", format_price(cfg.max_price) if cfg.max_price else "-"),
            ]
        )
    )
    console.print()
    if fields:
        console.print(_group_table(grouped(every, fields), fields))
        return
    print_offers(offers, max_rows=max_offers)


def _json(cfg: TaskConfiguration, offers: List[Offer], total: int, fields: List[str], catalog_message: Optional[str], no_capacity: Optional[str]) -> Dict[str, object]:
    """dstack's `offer --json` shape: the requirements, then the offers (or the groups)."""
    body: Dict[str, object] = {
        "requirements": {
            "resources": cfg.resources.model_dump(mode="json"),
            "spot": None if cfg.spot_policy is None else cfg.spot_policy.value,
            "max_price": cfg.max_price,
        },
        "total_offers": total,
        "catalog_message": catalog_message,
        "no_capacity": no_capacity,
    }
    if fields:
        body["groups"] = grouped(offers, fields)
    else:
        body["offers"] = [o.model_dump() for o in offers]
    return body


def _group_table(groups: List[Dict[str, object]], fields: List[str]) -> Table:
    table = Table(box=None)
    for field in fields:
        table.add_column(field.upper(), no_wrap=True)
    table.add_column("OFFERS", no_wrap=True)
    table.add_column("PRICE", no_wrap=True)
    for group in groups:
        table.add_row(*(escape(str(group[f])) for f in fields), str(group["offers"]), escape(str(group["price"])))
    return table
