"""Printing a run plan the way `dstack apply` does: properties, offers, then warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

from dstack_ray.config.task import TaskConfiguration
from dstack_ray.plan.offers import Offer, Offers
from dstack_ray.plan.planner import RunPlan
from dstack_ray_cli.console import console, properties_table
from dstack_ray_cli.properties import format_price, run_properties

NO_OFFERS_WARNING = (
    "[gold1]No matching instance offers available. Possible reasons:"
    " https://dstack.ai/docs/guides/troubleshooting/#no-offers[/]"
)


def offer_resources(offer: Offer) -> str:
    """The RESOURCES column: `cpu=12 mem=85GB disk=100GB.. gpu=A100:40GB:1 (spot)`."""
    return offer.shape.describe() + (" (spot)" if offer.spot else "")


def offer_price(offer: Offer) -> str:
    return "-" if offer.price is None else format_price(offer.price)


def offers_table(offers: list, max_rows: Optional[int] = 5) -> Table:
    table = Table(box=None)
    for column in ("#", "BACKEND", "RESOURCES", "INSTANCE TYPE", "PRICE", ""):
        table.add_column(column, style="grey58" if column in ("#",) else None, no_wrap=column != "RESOURCES")
    rows = offers if max_rows is None else offers[:max_rows]
    for index, offer in enumerate(rows, start=1):
        table.add_row(
            str(index),
            escape(offer.backend),
            escape(offer_resources(offer)),
            escape(offer.instance_type),
            escape(offer_price(offer)),
            escape(offer.availability),
            style="grey58" if index > 3 else None,
        )
    if max_rows is not None and len(offers) > max_rows:
        table.add_row("", "...", "", "", "", "", style="grey58")
    return table


def print_offers(offers: Offers, max_rows: Optional[int] = 3, catalog_note: bool = True) -> None:
    """dstack's offers table (cluster nodes first, then catalog), or its "no offers" warning."""
    shown = offers.all
    if shown:
        console.print(offers_table(shown, max_rows))
        if max_rows is not None and len(shown) > max_rows:
            priced = [o.price for o in shown if o.price is not None]
            most = f", ${max(priced):g} max" if priced else ""
            console.print(f"[grey58]Shown {max_rows} of {len(shown)} offers{most}[/]")
        console.print()
    if not offers.cluster:
        reason = f" ({offers.no_capacity})" if offers.no_capacity else ""
        console.print(NO_OFFERS_WARNING + escape(reason))
        console.print()
    if offers.catalog_message and (catalog_note or not offers.cluster):
        console.print(f"[dim]Catalog: {escape(offers.catalog_message)}[/]")


def print_plan(cfg: TaskConfiguration, plan: RunPlan, client: Any, path: Optional[Path], max_offers: Optional[int] = 3) -> None:
    rows = [("Ray cluster", client.address_text())]
    if path is not None:
        rows.append(("Configuration", str(path)))
    if cfg.name:
        rows.append(("Run name", cfg.name))
    rows += run_properties(cfg)
    bundles = "; ".join(f"{b.rank}: {b.describe()}" for b in plan.bundles[:4])
    if len(plan.bundles) > 4:
        bundles += f"; … ({len(plan.bundles)} nodes)"
    rows.append(("Ray bundles", f"{bundles} ({plan.strategy})"))
    if plan.layout:
        rows.append(("Layout", plan.layout))
    console.print(properties_table(rows))
    console.print()
    offers = client.offers(cfg)
    print_offers(offers, max_rows=max_offers, catalog_note=False)
    for note in plan.notes:
        console.print(f"[gold1]Note:[/] {escape(note)}")
    if plan.needs_new_nodes:
        console.print("[dim]The run waits for the autoscaler to add nodes that fit it.[/]")
    if plan.notes or plan.needs_new_nodes:
        console.print()
