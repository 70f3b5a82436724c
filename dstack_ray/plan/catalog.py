"""Catalog offers from skypilot's GPU/instance catalog (the optional `skypilot` extra).

Only catalogs skypilot already cached on disk (`~/.sky/catalogs/v8/<cloud>/vms.csv`, or under
$SKY_RUNTIME_DIR) are read: nothing is downloaded here, so planning works offline and never hangs. Each catalog
row is matched against a node group's resources, the spot policy, regions, instance types and
max price, and offers come cheapest first.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from dstack_ray.config.gpus import vendors_of
from dstack_ray.config.profiles import SpotPolicy
from dstack_ray.config.resources import ResourcesSpec
from dstack_ray.config.task import TaskConfiguration
from dstack_ray.models.cluster import ClusterView
from dstack_ray.plan.offers import Offer, Offers, OfferShape, cluster_offers
from dstack_ray.plan.planner import build_plan

# dstack backend names -> skypilot catalog directories.
CATALOG_CLOUDS = {
    "aws": "aws",
    "gcp": "gcp",
    "azure": "azure",
    "lambda": "lambda",
    "runpod": "runpod",
    "nebius": "nebius",
    "oci": "oci",
    "vastai": "vast",
    "cudo": "cudo",
    "digitalocean": "do",
}
CATALOG_VERSION = "v8"  # skypilot's catalog schema version
INSTALL_HINT = "install the skypilot extra for catalog offers: pip install 'dstack-ray[skypilot]'"


@dataclass
class CatalogResult:
    offers: List[Offer] = field(default_factory=list)
    message: Optional[str] = None  # why there are no catalog offers (not installed, no catalog)
    clouds: List[str] = field(default_factory=list)


@dataclass
class CatalogRow:
    cloud: str
    instance_type: str
    region: str
    cpus: float
    memory_gb: float
    gpu_name: Optional[str]
    gpu_count: int
    gpu_memory_gb: Optional[float]
    gpu_vendor: Optional[str]
    price: Optional[float]
    spot_price: Optional[float]


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _gpu_info(raw: Any) -> Dict[str, Any]:
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        info = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return {}
    gpus = info.get("Gpus") or [{}]
    gpu = gpus[0] if isinstance(gpus, list) and gpus else {}
    memory = (gpu.get("MemoryInfo") or {}).get("SizeInMiB")
    return {"memory_gb": memory / 1024 if memory else None, "vendor": (gpu.get("Manufacturer") or "").lower() or None}


def parse_rows(cloud: str, records: Iterable[Dict[str, Any]]) -> List[CatalogRow]:
    rows: Dict[tuple, CatalogRow] = {}
    for record in records:
        name = record.get("AcceleratorName")
        name = name if isinstance(name, str) and name else None
        info = _gpu_info(record.get("GpuInfo"))
        row = CatalogRow(
            cloud=cloud,
            instance_type=str(record.get("InstanceType")),
            region=str(record.get("Region") or ""),
            cpus=_number(record.get("vCPUs")) or 0,
            memory_gb=_number(record.get("MemoryGiB")) or 0,
            gpu_name=name,
            gpu_count=int(_number(record.get("AcceleratorCount")) or 0) if name else 0,
            gpu_memory_gb=info.get("memory_gb"),
            gpu_vendor=info.get("vendor"),
            price=_number(record.get("Price")),
            spot_price=_number(record.get("SpotPrice")),
        )
        rows.setdefault((row.instance_type, row.region), row)  # one row per zone in the CSV
    return list(rows.values())


def _gpu_matches(row: CatalogRow, resources: ResourcesSpec) -> bool:
    gpu = resources.gpu
    count = row.gpu_count
    if gpu is None:
        return True
    if not gpu.count.contains(count):
        return False
    if count == 0:
        return True
    base, _, suffix = row.gpu_name.partition("-") if row.gpu_name else ("", "", "")
    memory = row.gpu_memory_gb
    if memory is None and suffix.upper().endswith("GB") and suffix[:-2].isdigit():
        memory = float(suffix[:-2])  # skypilot's "A100-80GB"
    if gpu.name and not {n.lower() for n in gpu.name} & {(row.gpu_name or "").lower(), base.lower()}:
        return False
    if gpu.vendor is not None:
        vendor = row.gpu_vendor or next(iter(vendors_of(base or "")), None)
        if vendor is not None and str(vendor).lower() != gpu.vendor.value:
            return False
    if gpu.memory is not None and (memory is None or not gpu.memory.contains(memory)):
        return False
    if gpu.total_memory is not None and (memory is None or not gpu.total_memory.contains(memory * count)):
        return False
    return True


def _offer(row: CatalogRow, spot: bool) -> Offer:
    shape = OfferShape(
        cpus=row.cpus,
        memory_gb=row.memory_gb,
        disk="100GB..",
        gpu_name=row.gpu_name if row.gpu_count else None,
        gpu_memory_gb=(row.gpu_memory_gb or None) if row.gpu_count else None,
        gpu_count=row.gpu_count or 0,
    )
    return Offer(
        backend=f"{row.cloud} ({row.region})",
        shape=shape,
        instance_type=row.instance_type,
        price=row.spot_price if spot else row.price,
        spot=spot,
        region=row.region,
    )


def match_rows(rows: List[CatalogRow], cfg: TaskConfiguration, resources: ResourcesSpec) -> List[Offer]:
    """Offers for one node of `resources` under the task's profile fields, cheapest first."""
    policy = cfg.spot_policy or SpotPolicy.ONDEMAND
    markets = {SpotPolicy.SPOT: [True], SpotPolicy.ONDEMAND: [False], SpotPolicy.AUTO: [False, True]}[policy]
    offers = []
    for row in rows:
        if not resources.cpu.count.contains(row.cpus) or not resources.memory.contains(row.memory_gb):
            continue
        if not _gpu_matches(row, resources):
            continue
        if cfg.regions and row.region not in cfg.regions:
            continue
        if cfg.instance_types and row.instance_type not in cfg.instance_types:
            continue
        for spot in markets:
            price = row.spot_price if spot else row.price
            if price is None:
                continue
            if cfg.max_price is not None and price > cfg.max_price:
                continue
            offers.append(_offer(row, spot))
    return sorted(offers, key=lambda o: (o.price if o.price is not None else math.inf, o.backend, o.instance_type))


def catalog_dir() -> Path:
    """Where skypilot caches its catalogs: $SKY_RUNTIME_DIR (default ~)/.sky/catalogs/v8."""
    root = Path(os.environ.get("SKY_RUNTIME_DIR") or "~").expanduser()
    return root / ".sky" / "catalogs" / CATALOG_VERSION


def catalog_offers(cfg: TaskConfiguration, group_index: int = 0) -> CatalogResult:
    """Catalog offers for a node of group `group_index`, from the catalogs on this machine.

    The CSVs are read with the standard library (importing skypilot takes seconds); skypilot is
    what fetches and refreshes them.
    """
    backends = [b.value for b in cfg.backends] if cfg.backends else list(CATALOG_CLOUDS)
    unsupported = [b for b in backends if b not in CATALOG_CLOUDS]
    clouds = [(b, CATALOG_CLOUDS[b]) for b in backends if b in CATALOG_CLOUDS]
    root = catalog_dir()
    found = [(name, root / sky_cloud / "vms.csv") for name, sky_cloud in clouds if (root / sky_cloud / "vms.csv").exists()]
    if not found:
        if importlib.util.find_spec("sky") is None:
            return CatalogResult(message=INSTALL_HINT)
        message = (
            f"no skypilot catalog on this machine for {', '.join(b for b, _ in clouds) or 'these backends'}"
            f" (looked in {root}); fetch it with `sky gpus list` where the internet is reachable,"
            " or place a vms.csv at <dir>/<cloud>/vms.csv"
        )
        if unsupported:
            message += f"; no catalog exists for {', '.join(unsupported)}"
        return CatalogResult(message=message)
    rows: List[CatalogRow] = []
    for name, path in found:
        with open(path, newline="") as f:
            rows += parse_rows(name, csv.DictReader(f))
    resources = cfg.node_groups[group_index].resources
    return CatalogResult(offers=match_rows(rows, cfg, resources), clouds=[name for name, _ in found])


def offers_for(cfg: TaskConfiguration, cluster: ClusterView, catalog: bool = True) -> Offers:
    """Where the task could run: the cluster's nodes and autoscaler node types that fit a node
    of it, then (with `catalog`, from the catalogs on this machine) cloud instances."""
    plan = build_plan(cfg, cluster)
    result = catalog_offers(cfg) if catalog else None
    return Offers(
        cluster=cluster_offers(cfg, plan, cluster),
        catalog=result.offers if result else [],
        catalog_message=result.message if result else None,
        no_capacity=plan.no_capacity,
    )
