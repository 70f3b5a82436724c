"""Ray cluster launcher configurations for a task: the cluster that `ray up` (or KubeRay) starts
so that the task's placement group can land on it.

A template in `cluster_configs/` (one per provider) is the base. For every node group of the
task a worker node type is added whose Ray resources cover the group's bundle (CPU, memory,
GPU, `accelerator_type:<GPU>`; see planner.py) and whose instance type is the cheapest catalog
offer or the one given; the market (spot or on-demand) goes into the node config and into Ray's
`ray.io/market-type` label, which the planner selects on. The head keeps `CPU: 0` so that runs
never land on it: its instance type is not what the task asked for.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from dstack_ray.config.checks import inferred_gpu_vendor
from dstack_ray.config.gpus import AcceleratorVendor, canonical_name, vendors_of
from dstack_ray.config.profiles import BackendType, SpotPolicy
from dstack_ray.config.task import NodeGroup, TaskConfiguration
from dstack_ray.errors import DstackRayError
from dstack_ray.plan.catalog import catalog_offers
from dstack_ray.models.cluster import ACCELERATOR_PREFIX, GB
from dstack_ray.plan.offers import Offer


class Provider(str, enum.Enum):
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    KUBERAY = "kuberay"
    LOCAL = "local"


CLOUDS = (Provider.AWS, Provider.GCP, Provider.AZURE)
RAY_IMAGE_AUTO = "auto"  # ray_image: rayproject/ray matching this Ray and Python, CUDA variant on GPU nodes
MARKET_LABEL = "ray.io/market-type"
REGION_LABEL = "ray.io/availability-region"
ZONE_LABEL = "ray.io/availability-zone"
MARKET_ENV = "RAY_NODE_MARKET_TYPE"  # Ray turns it into the ray.io/market-type label
HEAD_TYPE = "head"
# Template node types each group's worker type is copied from (the GPU one where a template has it).
WORKER_PROTOTYPE, GPU_WORKER_PROTOTYPE = "worker", "worker-gpu"
DEFAULT_DISK_GB = 100
INSTANCE_TYPE_HINT = (
    "pass --instance-type TYPE (every group) or --instance-type GROUP=TYPE (one group):"
    " the instance type to launch, which needs no catalog"
)
AUTO_SPOT_NOTE = (
    "spot_policy: auto renders on-demand workers: Ray's cluster launcher has no spot-to-on-demand"
    " fallback (a spot node type without capacity stays pending); set spot_policy: spot for spot workers"
)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_NAME_MEMORY = re.compile(r"^(?P<base>.+)-(?P<mem>\d+)GB?$", re.IGNORECASE)
# N1 machines take these GPUs as guestAccelerators; newer GCP GPU machine types include theirs.
_GCP_ATTACHED_GPUS = {"T4", "V100", "P100", "P4", "K80"}
_K8S_GPU_RESOURCE = {
    AcceleratorVendor.NVIDIA: "nvidia.com/gpu",
    AcceleratorVendor.AMD: "amd.com/gpu",
    AcceleratorVendor.GOOGLE: "google.com/tpu",
    AcceleratorVendor.INTEL: "habana.ai/gaudi",
}
_DOCKER_GPU_OPTIONS = {
    AcceleratorVendor.NVIDIA: ["--gpus all"],
    AcceleratorVendor.AMD: ["--device=/dev/kfd", "--device=/dev/dri", "--group-add=video"],
}


class LauncherError(DstackRayError):
    """The task can't be turned into a cluster configuration as asked; `hint` says what to pass."""


@dataclass
class WorkerType:
    """One node group's worker node type: what to launch and the Ray resources it declares."""

    group: str
    name: str
    nodes: int
    cpus: int
    memory_bytes: int
    gpus: int = 0
    accelerator: Optional[str] = None  # Ray's accelerator type, e.g. "A10G", "A100-80G"
    vendor: Optional[AcceleratorVendor] = None
    instance_type: Optional[str] = None
    price: Optional[float] = None
    spot: bool = False
    disk_gb: int = DEFAULT_DISK_GB

    @property
    def resources(self) -> Dict[str, int]:
        """What the node type declares to Ray: at least what one bundle of the group asks for."""
        resources = {"CPU": self.cpus}
        if self.memory_bytes:
            resources["memory"] = self.memory_bytes
        if self.gpus:
            resources["GPU"] = self.gpus
        if self.accelerator:
            resources[ACCELERATOR_PREFIX + self.accelerator] = 1
        return resources

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"


@dataclass
class RenderedCluster:
    """A rendered configuration, with what a user should know about the choices made for it."""

    provider: Provider
    config: Dict[str, Any]
    workers: List[WorkerType]
    region: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    source: Optional[str] = None

    def to_yaml(self) -> str:
        return _header(self) + yaml.safe_dump(self.config, sort_keys=False, width=1000)


def render(
    cfg: TaskConfiguration,
    provider: Union[Provider, str],
    *,
    region: Optional[str] = None,
    zone: Optional[str] = None,
    instance_type: Union[str, Mapping[str, str], None] = None,
    cluster_name: Optional[str] = None,
    head_instance_type: Optional[str] = None,
    head_ip: Optional[str] = None,
    worker_ips: Optional[Sequence[str]] = None,
    ssh_user: Optional[str] = None,
    project_id: Optional[str] = None,
    ray_image: Optional[str] = None,
    template: Optional[Path] = None,
    source: Optional[str] = None,
) -> RenderedCluster:
    """The cluster configuration for `cfg` on `provider`, from its template in cluster_configs/.

    `instance_type` is one type for every node group or a mapping group name -> type; without it
    each group gets the cheapest catalog offer. `ray_image` runs Ray itself in that container
    (a `docker:` section, or the KubeRay pod image; RAY_IMAGE_AUTO picks rayproject/ray). A task's
    own `image` is never used for it: the NodeAgent starts the task's container with the node's
    docker or podman, which a container running Ray doesn't have.
    """
    provider = _provider(provider)
    _check_arguments(
        provider,
        zone=zone,
        instance_type=instance_type,
        head_instance_type=head_instance_type,
        head_ip=head_ip,
        worker_ips=worker_ips,
        project_id=project_id,
        ssh_user=ssh_user,
    )
    if cfg.image and ray_image:
        raise LauncherError(
            f"the task runs in its own image ({cfg.image}), which dstack-ray starts with the node's"
            " docker or podman; Ray itself can't run in a container then",
            hint="drop --ray-image/--docker: Ray runs on the host and the task in its image",
        )
    if provider == Provider.KUBERAY and cfg.image:
        raise LauncherError(
            f"the task's image ({cfg.image}) needs a container runtime on the node, which KubeRay pods don't have",
            hint="remove `image` from the task (its commands then run in the Ray pod image, set it with"
            " --ray-image), or render for a VM provider (aws, gcp, azure, local)",
        )
    notes: List[str] = []
    path = template or template_path(provider)
    config = _fill_placeholders(_load_template(provider, path), _placeholders(ray_image), path)
    name = _cluster_name(cluster_name or cfg.name or "dstack-ray")
    policy = cfg.spot_policy or SpotPolicy.ONDEMAND
    if policy == SpotPolicy.AUTO and provider != Provider.LOCAL:
        notes.append(AUTO_SPOT_NOTE)
    spot = policy == SpotPolicy.SPOT
    chosen_region: Optional[str] = None
    if provider in CLOUDS:
        given = _instance_types(cfg, instance_type)
        workers, chosen_region = _cloud_workers(cfg, provider, given, region, spot, notes)
    else:
        workers = [_worker_from_minimums(cfg, group, index, spot) for index, group in enumerate(cfg.node_groups)]
    if provider == Provider.KUBERAY:
        _kuberay(config, workers, name, ray_image, notes)
    elif provider == Provider.LOCAL:
        _local(config, cfg, workers, name, head_ip, list(worker_ips or []), ssh_user, ray_image, notes)
    else:
        _cloud(
            config,
            cfg,
            provider,
            workers,
            name=name,
            region=chosen_region,
            zone=zone,
            head_instance_type=head_instance_type,
            ssh_user=ssh_user,
            project_id=project_id,
            ray_image=ray_image,
            notes=notes,
        )
    return RenderedCluster(provider, config, workers, chosen_region, notes, source)


def render_cluster(cfg: TaskConfiguration, provider: Union[Provider, str], **options: Any) -> Dict[str, Any]:
    """The configuration as a dict (see `render` for the options)."""
    return render(cfg, provider, **options).config


def template_path(provider: Union[Provider, str]) -> Path:
    """The template of `provider`: in the installed package, else in this source checkout."""
    name = f"{_provider(provider).value}.yaml"
    package_dir = Path(__file__).resolve().parents[1]
    for directory in (package_dir / "cluster_configs", package_dir.parent / "cluster_configs"):
        if (directory / name).exists():
            return directory / name
    raise LauncherError(
        f"the cluster template {name} is missing from this installation",
        hint="reinstall dstack-ray, or pass --template with a cluster YAML to start from",
    )


def ray_accelerator_type(gpu_name: str, memory_gb: Optional[float] = None) -> str:
    """Ray's accelerator type for a dstack or catalog GPU name (`A100-80GB` -> `A100-80G`), the
    one Ray detects on such a node where it can, so declared and detected resources agree."""
    match = _NAME_MEMORY.match(gpu_name)
    base = match.group("base") if match else gpu_name
    memory = float(match.group("mem")) if match else memory_gb
    name = canonical_name(base)
    vendors = vendors_of(name)
    if name == "A100" and memory is not None and memory >= 80:
        return "A100-80G"
    if AcceleratorVendor.AMD in vendors:
        return f"AMD-Instinct-{name}"
    if AcceleratorVendor.GOOGLE in vendors:
        return f"TPU-{name.upper()}"
    if AcceleratorVendor.INTEL in vendors:
        return f"Intel-{name.upper()}"
    if name.startswith("RTXPRO"):
        return "RTX-PRO-" + name[len("RTXPRO") :]
    return name


def ray_image_for(gpu: bool) -> str:
    """rayproject/ray for this machine's Ray and Python versions (CUDA variant for GPU nodes)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"rayproject/ray:{_ray_version()}-{python}{'-gpu' if gpu else ''}"


def _image(ray_image: Optional[str], gpu: bool) -> str:
    return ray_image_for(gpu) if ray_image in (None, RAY_IMAGE_AUTO) else ray_image


# --- arguments -----------------------------------------------------------------------------


def _provider(provider: Union[Provider, str]) -> Provider:
    try:
        return Provider(provider)
    except ValueError:
        choices = ", ".join(p.value for p in Provider)
        raise LauncherError(f"unknown provider {provider!r}", hint=f"use one of: {choices}") from None


def _check_arguments(provider: Provider, **given: Any) -> None:
    """Options that mean nothing for `provider` are errors, not silently dropped."""
    allowed = {
        "zone": CLOUDS,
        "instance_type": CLOUDS,
        "head_instance_type": CLOUDS,
        "project_id": (Provider.GCP,),
        "head_ip": (Provider.LOCAL,),
        "worker_ips": (Provider.LOCAL,),
        "ssh_user": (*CLOUDS, Provider.LOCAL),
    }
    for option, value in given.items():
        if value and provider not in allowed[option]:
            where = ", ".join(p.value for p in allowed[option])
            flag = "--" + option.replace("_", "-").replace("worker-ips", "worker-ip")
            raise LauncherError(f"{flag} applies to --provider {where}, not {provider.value}")


def _instance_types(cfg: TaskConfiguration, given: Union[str, Mapping[str, str], None]) -> Dict[str, str]:
    groups = [g.name or str(i) for i, g in enumerate(cfg.node_groups)]
    if given is None:
        return {}
    if isinstance(given, str):
        return {group: given for group in groups}
    unknown = sorted(set(given) - set(groups))
    if unknown:
        raise LauncherError(
            f"--instance-type names node group(s) the task doesn't have: {', '.join(unknown)}",
            hint=f"the task's node groups: {', '.join(groups)}",
        )
    return dict(given)


def _cluster_name(name: str) -> str:
    """A name every provider accepts (KubeRay's is a Kubernetes object name)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50]
    return cleaned or "dstack-ray"


# --- templates -----------------------------------------------------------------------------


def _ray_version() -> str:
    return metadata.version("ray")


def _placeholders(ray_image: Optional[str]) -> Dict[str, str]:
    from dstack_ray.service.preflight import ray_range_text

    return {
        "ray": f"ray[default]=={_ray_version()}",
        "ray_version": _ray_version(),
        "ray_range": ray_range_text(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "ray_image": _image(ray_image, gpu=False),
    }


def _load_template(provider: Provider, path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise LauncherError(f"cannot read the cluster template {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LauncherError(f"the cluster template {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LauncherError(f"the cluster template {path} is not a mapping")
    if provider == Provider.KUBERAY:
        found, checked = data.get("kind") == "RayCluster", "kind"
    else:
        found, checked = (data.get("provider") or {}).get("type") == provider.value, "provider.type"
    if not found:
        raise LauncherError(f"the cluster template {path} is not a {provider.value} template (checked its {checked})")
    return data


def _fill_placeholders(value: Any, values: Mapping[str, str], path: Path) -> Any:
    if isinstance(value, dict):
        return {key: _fill_placeholders(item, values, path) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_placeholders(item, values, path) for item in value]
    if isinstance(value, str):

        def replace(match: "re.Match[str]") -> str:
            if match.group(1) not in values:
                known = ", ".join("{{ %s }}" % k for k in values)
                raise LauncherError(
                    f"unknown placeholder {match.group(0)} in {path}", hint=f"known placeholders: {known}"
                )
            return values[match.group(1)]

        return _PLACEHOLDER.sub(replace, value)
    return value


# --- worker node types ---------------------------------------------------------------------


def _group_name(group: NodeGroup, index: int) -> str:
    return group.name or str(index)


def _gpu_vendor(
    cfg: TaskConfiguration, group: NodeGroup, accelerator_name: Optional[str]
) -> Optional[AcceleratorVendor]:
    vendor = inferred_gpu_vendor(group.resources.gpu, cfg.image, cfg.docker)
    if vendor is None and accelerator_name:
        known = vendors_of(accelerator_name)
        vendor = next(iter(known)) if len(known) == 1 else None
    return vendor


def _worker_from_minimums(cfg: TaskConfiguration, group: NodeGroup, index: int, spot: bool) -> WorkerType:
    """A node type sized exactly to the group's bundle: what's known without a catalog."""
    resources = group.resources
    gpu = resources.gpu
    gpus, gpu_name, accelerator = 0, None, None
    if gpu is not None and gpu.count.max != 0:
        gpus = int(gpu.count.min or 0)
        gpu_name = gpu.name[0] if gpus and gpu.name else None
        if gpu_name:
            accelerator = ray_accelerator_type(gpu_name, gpu.memory.min if gpu.memory is not None else None)
    name = _group_name(group, index)
    return WorkerType(
        group=name,
        name=f"worker-{name}",
        nodes=group.nodes,
        cpus=max(1, int(resources.cpu.count.min or 0)),  # Ray never places a bundle on CPU: 0
        memory_bytes=int(math.ceil((resources.memory.min or 0) * GB)),
        gpus=gpus,
        accelerator=accelerator,
        vendor=_gpu_vendor(cfg, group, gpu_name) if gpus else None,
        spot=spot,
        disk_gb=_disk_gb(group),
    )


def _disk_gb(group: NodeGroup) -> int:
    disk = group.resources.disk
    return int(math.ceil(disk.size.min)) if disk is not None and disk.size.min else DEFAULT_DISK_GB


def _worker_from_offer(cfg: TaskConfiguration, group: NodeGroup, index: int, offer: Offer) -> WorkerType:
    """The node type of a catalog offer: the instance's own CPUs, memory and GPUs."""
    worker = _worker_from_minimums(cfg, group, index, offer.spot)
    worker.instance_type = offer.instance_type
    worker.price = offer.price
    shape = offer.shape
    worker.cpus = max(worker.cpus, int(round(shape.cpus)))
    if shape.memory_gb:
        worker.memory_bytes = max(worker.memory_bytes, int(shape.memory_gb * GB))
    if shape.gpu_count and shape.gpu_name:
        worker.gpus = shape.gpu_count
        worker.accelerator = ray_accelerator_type(shape.gpu_name, shape.gpu_memory_gb)
        worker.vendor = _gpu_vendor(cfg, group, _NAME_MEMORY.sub(r"\g<base>", shape.gpu_name))
    return worker


def _catalog(
    cfg: TaskConfiguration,
    provider: Provider,
    index: int,
    spot: bool,
    region: Optional[str],
    instance_type: Optional[str],
) -> Tuple[List[Offer], Optional[str]]:
    """Catalog offers of `provider` for one node of group `index`, cheapest first."""
    update: Dict[str, Any] = {
        "backends": [BackendType(provider.value)],
        "spot_policy": SpotPolicy.SPOT if spot else SpotPolicy.ONDEMAND,
    }
    if region:
        update["regions"] = [region]
    if instance_type:
        update["instance_types"] = [instance_type]
    result = catalog_offers(cfg.model_copy(update=update), index)
    offers = [o for o in result.offers if o.backend.split(" ")[0] == provider.value and o.price is not None]
    return offers, result.message


def _cheapest_region(groups: List[NodeGroup], found: List[List[Offer]], provider: Provider) -> Optional[str]:
    """The region where every group that has offers has one, at the lowest total price."""
    constraining = [(group, offers) for group, offers in zip(groups, found) if offers]
    if not constraining:
        return None
    regions = set.intersection(*({o.region for o in offers if o.region} for _, offers in constraining))
    if not regions:
        raise LauncherError(
            f"no single {provider.value} region has catalog offers for every node group"
            " (a Ray cluster lives in one region)",
            hint="pass --region, or " + INSTANCE_TYPE_HINT,
        )

    def cost(region: str) -> float:
        return sum(min(o.price or 0.0 for o in offers if o.region == region) * g.nodes for g, offers in constraining)

    return min(sorted(regions), key=cost)


def _cloud_workers(
    cfg: TaskConfiguration,
    provider: Provider,
    given: Dict[str, str],
    region: Optional[str],
    spot: bool,
    notes: List[str],
) -> Tuple[List[WorkerType], Optional[str]]:
    groups = cfg.node_groups
    found: List[List[Offer]] = []
    messages: List[Optional[str]] = []
    for index, group in enumerate(groups):
        offers, message = _catalog(cfg, provider, index, spot, region, given.get(_group_name(group, index)))
        found.append(offers)
        messages.append(message)
    chosen = region or _cheapest_region(groups, found, provider)
    if chosen is None and cfg.regions:
        chosen = cfg.regions[0]
    if region and cfg.regions and region not in cfg.regions:
        notes.append(f"--region {region} is not among the task's regions ({', '.join(cfg.regions)})")
    workers = []
    for index, (group, offers, message) in enumerate(zip(groups, found, messages)):
        name = _group_name(group, index)
        in_region = [o for o in offers if chosen is None or o.region == chosen]
        instance_type = given.get(name) or (cfg.instance_types[0] if cfg.instance_types and message else None)
        if in_region:
            best = in_region[0]
            worker = _worker_from_offer(cfg, group, index, best)
            shape = best.shape.describe()
            if given.get(name):
                notes.append(f"{worker.name}: {best.instance_type} ({shape}), ${best.price:g}/h {worker.market}")
            else:
                notes.append(
                    f"{worker.name}: {best.instance_type} in {best.region}, ${best.price:g}/h {worker.market}"
                    f" ({shape}); the cheapest of {len(in_region)} matching {provider.value} offer(s) there"
                )
        elif instance_type:
            worker = _worker_from_minimums(cfg, group, index, spot)
            worker.instance_type = instance_type
            if message:
                why = f"no {provider.value} catalog on this machine"
            else:
                why = f"{instance_type} has no matching {provider.value} catalog offer"
            notes.append(
                f"{worker.name}: {instance_type} ({why}): the node type declares the group's minimum"
                f" resources ({_describe(worker)}); make sure {instance_type} has them"
            )
        else:
            raise _no_offer(provider, group, name, spot, region, message)
        workers.append(worker)
    return workers, chosen


def _no_offer(
    provider: Provider, group: NodeGroup, name: str, spot: bool, region: Optional[str], message: Optional[str]
) -> LauncherError:
    what = f"node group {name} ({group.resources.pretty_format()}, {'spot' if spot else 'on-demand'})"
    if message:
        return LauncherError(f"no instance type for {what}: {message}", hint=INSTANCE_TYPE_HINT)
    where = f" in {region}" if region else ""
    return LauncherError(
        f"no {provider.value} catalog offer{where} matches {what}",
        hint=f"relax resources, spot_policy, {'--region' if region else 'regions'} or max_price, or "
        + INSTANCE_TYPE_HINT,
    )


def _describe(worker: WorkerType) -> str:
    parts = [f"cpu={worker.cpus}", f"mem={worker.memory_bytes / GB:g}GB"]
    if worker.gpus:
        parts.append(f"gpu={worker.accelerator + ':' if worker.accelerator else ''}{worker.gpus}")
    return " ".join(parts)


def _labels(worker_market: str, region: Optional[str], zone: Optional[str]) -> Dict[str, str]:
    labels = {MARKET_LABEL: worker_market}
    if region:
        labels[REGION_LABEL] = region
    if zone:
        labels[ZONE_LABEL] = zone
    return labels


def _docker_gpu_options(worker: WorkerType) -> List[str]:
    if not worker.gpus:
        return []
    return _DOCKER_GPU_OPTIONS.get(worker.vendor or AcceleratorVendor.NVIDIA, [])


def _pull_commands(cfg: TaskConfiguration, notes: List[str]) -> List[str]:
    """Pull the task's image when a node starts (best effort), so the first run doesn't wait for it."""
    if not cfg.image:
        return []
    if cfg.registry_auth is not None:
        notes.append(f"{cfg.image} is pulled when a run starts (with registry_auth), not when nodes start")
        return []
    return [f"docker pull {shlex.quote(cfg.image)} || true"]


# --- providers -----------------------------------------------------------------------------


def _prototype(config: Dict[str, Any], gpu: bool) -> Dict[str, Any]:
    types = config.get("available_node_types") or {}
    for name in (GPU_WORKER_PROTOTYPE, WORKER_PROTOTYPE) if gpu else (WORKER_PROTOTYPE,):
        if name in types:
            return copy.deepcopy(types[name])
    return {"min_workers": 0, "max_workers": 0, "resources": {}, "node_config": {}}


def _cloud(
    config: Dict[str, Any],
    cfg: TaskConfiguration,
    provider: Provider,
    workers: List[WorkerType],
    *,
    name: str,
    region: Optional[str],
    zone: Optional[str],
    head_instance_type: Optional[str],
    ssh_user: Optional[str],
    project_id: Optional[str],
    ray_image: Optional[str],
    notes: List[str],
) -> None:
    total = sum(w.nodes for w in workers)
    config["cluster_name"] = name
    config["max_workers"] = total
    config["upscaling_speed"] = float(max(1, total))
    provider_config = config.setdefault("provider", {})
    zone = zone or (cfg.availability_zones[0] if cfg.availability_zones else None)
    region = region or provider_config.get("location" if provider == Provider.AZURE else "region")
    if provider == Provider.AZURE:
        provider_config["location"] = region
    else:
        provider_config["region"] = region
    if provider == Provider.GCP:
        if zone is None:
            zone = f"{region}-a"
            notes.append(f"availability_zone is {zone}: pass --zone where your instance types are offered")
        if project_id:
            provider_config["project_id"] = project_id
        elif not provider_config.get("project_id"):
            notes.append("provider.project_id is not set: pass --project-id, or edit the file before `ray up`")
    if zone:
        provider_config["availability_zone"] = zone
    if ssh_user:
        config.setdefault("auth", {})["ssh_user"] = ssh_user
    types = config.get("available_node_types") or {}
    head_type = config.get("head_node_type") or HEAD_TYPE
    head = copy.deepcopy(types.get(head_type) or {"resources": {"CPU": 0}, "node_config": {}})
    if head_instance_type:
        _set_instance_type(provider, head["node_config"], head_instance_type)
    head["labels"] = _labels("on-demand", region, zone)
    node_types: Dict[str, Any] = {head_type: head}
    pull = _pull_commands(cfg, notes)
    for worker in workers:
        node = _prototype(config, gpu=bool(worker.gpus))
        node["min_workers"] = 0
        node["max_workers"] = worker.nodes
        node["resources"] = worker.resources
        node["labels"] = _labels(worker.market, region, zone)
        node_config = node.setdefault("node_config", {})
        _set_instance_type(provider, node_config, worker.instance_type or "")
        {Provider.AWS: _aws_node, Provider.GCP: _gcp_node, Provider.AZURE: _azure_node}[provider](
            node_config, worker, cfg
        )
        if pull:
            node["initialization_commands"] = list(config.get("initialization_commands") or []) + pull
        if ray_image and worker.gpus:
            docker: Dict[str, Any] = {"worker_run_options": _docker_gpu_options(worker)}
            if ray_image == RAY_IMAGE_AUTO:
                docker["worker_image"] = _image(ray_image, gpu=True)
            node["docker"] = docker
        node_types[worker.name] = node
    config["available_node_types"] = node_types
    config["head_node_type"] = head_type
    if ray_image:
        config["docker"] = _docker_section(_image(ray_image, gpu=False))


def _set_instance_type(provider: Provider, node_config: Dict[str, Any], instance_type: str) -> None:
    if provider == Provider.AWS:
        node_config["InstanceType"] = instance_type
    elif provider == Provider.GCP:
        node_config["machineType"] = instance_type
    else:
        node_config.setdefault("azure_arm_parameters", {})["vmSize"] = instance_type


def _aws_node(node: Dict[str, Any], worker: WorkerType, cfg: TaskConfiguration) -> None:
    mappings = node.setdefault("BlockDeviceMappings", [])
    root = next((m for m in mappings if "Ebs" in m), None)
    if root is None:
        root = {"DeviceName": "/dev/sda1", "Ebs": {"VolumeType": "gp3"}}
        mappings.insert(0, root)
    root["Ebs"]["VolumeSize"] = worker.disk_gb
    if worker.spot:
        market: Dict[str, Any] = {"MarketType": "spot"}
        if cfg.max_price is not None:
            market["SpotOptions"] = {"MaxPrice": f"{cfg.max_price:g}"}
        node["InstanceMarketOptions"] = market
    else:
        node.pop("InstanceMarketOptions", None)


def _gcp_node(node: Dict[str, Any], worker: WorkerType, cfg: TaskConfiguration) -> None:
    disks = node.get("disks") or []
    if disks:
        disks[0].setdefault("initializeParams", {})["diskSizeGb"] = worker.disk_gb
    gpu_name = (worker.accelerator or "").upper()
    if worker.gpus and (worker.instance_type or "").startswith("n1-") and gpu_name in _GCP_ATTACHED_GPUS:
        node["guestAccelerators"] = [
            {"acceleratorType": f"nvidia-tesla-{gpu_name.lower()}", "acceleratorCount": worker.gpus}
        ]
    scheduling: Dict[str, Any] = dict(node["scheduling"]) if isinstance(node.get("scheduling"), dict) else {}
    if worker.gpus:
        scheduling["onHostMaintenance"] = "TERMINATE"  # GPU VMs can't live-migrate
    if worker.spot:
        scheduling.update(
            provisioningModel="SPOT",
            instanceTerminationAction="DELETE",
            onHostMaintenance="TERMINATE",
            automaticRestart=False,
        )
    if scheduling:
        node["scheduling"] = scheduling


def _azure_node(node: Dict[str, Any], worker: WorkerType, cfg: TaskConfiguration) -> None:
    params = node.setdefault("azure_arm_parameters", {})
    params["osDiskSize"] = worker.disk_gb
    if worker.spot:
        params["priority"] = "Spot"
        params["evictionPolicy"] = "Delete"
        params["billingProfile"] = {"maxPrice": cfg.max_price if cfg.max_price is not None else -1}
    else:
        for key in ("priority", "evictionPolicy", "billingProfile"):
            params.pop(key, None)


def _docker_section(image: str) -> Dict[str, Any]:
    return {
        "image": image,
        "container_name": "ray_container",
        "pull_before_run": True,
        "run_options": ["--ulimit nofile=65536:65536"],
    }


def _local(
    config: Dict[str, Any],
    cfg: TaskConfiguration,
    workers: List[WorkerType],
    name: str,
    head_ip: Optional[str],
    worker_ips: List[str],
    ssh_user: Optional[str],
    ray_image: Optional[str],
    notes: List[str],
) -> None:
    if not head_ip:
        raise LauncherError(
            "the local provider needs the machines to start Ray on",
            hint="pass --head-ip HOST and --worker-ip HOST for each other machine",
        )
    if cfg.spot_policy == SpotPolicy.SPOT:
        raise LauncherError(
            "spot_policy: spot asks for spot instances; machines of the local provider are not spot",
            hint="set spot_policy: on-demand (or auto) in the task, or render for a cloud provider",
        )
    total = sum(w.nodes for w in workers)
    if total > len(worker_ips) + 1:
        raise LauncherError(
            f"the task has {total} nodes, but --head-ip and {len(worker_ips)} --worker-ip make"
            f" {len(worker_ips) + 1} machines",
            hint=f"pass {total - 1} --worker-ip (each run node needs a machine of its own)",
        )
    config["cluster_name"] = name
    config["provider"]["head_ip"] = head_ip
    config["provider"]["worker_ips"] = worker_ips
    config["max_workers"] = len(worker_ips)
    if ssh_user:
        config.setdefault("auth", {})["ssh_user"] = ssh_user
    config["initialization_commands"] = list(config.get("initialization_commands") or []) + _pull_commands(cfg, notes)
    for worker in workers:
        notes.append(
            f"group {worker.group}: {worker.nodes} machine(s) with at least {_describe(worker)}"
            " (on-prem nodes declare what Ray detects on them)"
        )
    if ray_image:
        gpu_workers = [w for w in workers if w.gpus]
        docker = _docker_section(_image(ray_image, gpu=bool(gpu_workers)))
        if gpu_workers:
            docker["run_options"] += _docker_gpu_options(gpu_workers[0])
        config["docker"] = docker


def _quantity(memory_bytes: int) -> str:
    """A Kubernetes memory quantity: Gi when whole, else bytes."""
    return f"{memory_bytes // GB}Gi" if memory_bytes % GB == 0 else str(memory_bytes)


def _kuberay_custom_resources(resources: Mapping[str, int]) -> str:
    """KubeRay's rayStartParams `resources` format: a JSON object, escaped and quoted again."""
    return '"' + json.dumps(dict(resources), sort_keys=True).replace('"', '\\"') + '"'


def _kuberay(
    config: Dict[str, Any],
    workers: List[WorkerType],
    name: str,
    ray_image: Optional[str],
    notes: List[str],
) -> None:
    config.setdefault("metadata", {})["name"] = name
    spec = config.setdefault("spec", {})
    spec["rayVersion"] = _ray_version()
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = _image(ray_image, gpu=False)
    prototypes = spec.get("workerGroupSpecs") or [{"template": {"spec": {"containers": [{"name": "ray-worker"}]}}}]
    spec["workerGroupSpecs"] = [_kuberay_group(prototypes[0], worker, ray_image) for worker in workers]
    for worker in workers:
        if worker.spot:
            notes.append(
                f"{worker.name}: add your cluster's spot nodeSelector/tolerations (GKE cloud.google.com/gke-spot,"
                " EKS eks.amazonaws.com/capacityType, AKS kubernetes.azure.com/scalesetpriority): its pods"
                f" are labelled {MARKET_LABEL}=spot"
            )
        if worker.accelerator:
            notes.append(
                f"{worker.name}: add a nodeSelector for {worker.accelerator} nodes if your cluster mixes GPU models"
            )


def _kuberay_group(prototype: Dict[str, Any], worker: WorkerType, ray_image: Optional[str]) -> Dict[str, Any]:
    """A worker group whose pods start Ray with the resources a bundle of the node group asks for."""
    group: Dict[str, Any] = copy.deepcopy(prototype)
    group.update(groupName=worker.name, replicas=0, minReplicas=0, maxReplicas=worker.nodes)
    params = {"num-cpus": str(worker.cpus)}
    if worker.memory_bytes:
        params["memory"] = str(worker.memory_bytes)  # Ray would detect less than the pod's limit
    if worker.gpus:
        params["num-gpus"] = str(worker.gpus)
    if worker.accelerator:
        params["resources"] = _kuberay_custom_resources({ACCELERATOR_PREFIX + worker.accelerator: 1})
    group["rayStartParams"] = {**(group.get("rayStartParams") or {}), **params}
    container: Dict[str, Any] = group["template"]["spec"]["containers"][0]
    container["image"] = _image(ray_image, gpu=bool(worker.gpus))
    limits = {"cpu": str(worker.cpus)}
    if worker.memory_bytes:
        limits["memory"] = _quantity(worker.memory_bytes)
    if worker.gpus:
        limits[_K8S_GPU_RESOURCE.get(worker.vendor or AcceleratorVendor.NVIDIA, "nvidia.com/gpu")] = str(worker.gpus)
    container["resources"] = {"requests": dict(limits), "limits": dict(limits)}
    if worker.spot:
        env = [e for e in container.get("env") or [] if e.get("name") != MARKET_ENV]
        container["env"] = env + [{"name": MARKET_ENV, "value": "spot"}]
    return group


def _header(rendered: RenderedCluster) -> str:
    what = rendered.source or rendered.config.get("cluster_name") or (rendered.config.get("metadata") or {}).get("name")
    lines = [f"Ray cluster for {what} ({rendered.provider.value}), rendered by dstack-ray."]
    if rendered.provider == Provider.KUBERAY:
        name = rendered.config["metadata"]["name"]
        lines += [
            "Start it: kubectl apply -f <this file>   Remove it: kubectl delete -f <this file>",
            f"Submit runs: kubectl port-forward svc/{name}-head-svc 10001:10001, then",
            "  dstack-ray apply --address ray://localhost:10001 -f <task>",
        ]
    else:
        lines += [
            "Start it: ray up -y <this file>   Remove it: ray down -y <this file>",
            "Submit runs: ray attach <this file> -p 10001 (forwards Ray's client port), then",
            "  dstack-ray apply --address ray://localhost:10001 -f <task>",
        ]
    if rendered.provider != Provider.LOCAL:
        kind = "worker group" if rendered.provider == Provider.KUBERAY else "node type"
        for worker in rendered.workers:
            what = ", ".join(filter(None, [worker.instance_type, _describe(worker), worker.market]))
            lines.append(f"Node group {worker.group} -> {kind} {worker.name} (up to {worker.nodes}): {what}")
    if rendered.notes:
        lines.append("Notes:")
        lines += [f"  - {note}" for note in rendered.notes]
    return "".join(f"# {line}\n" for line in lines) + "\n"
