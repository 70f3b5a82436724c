"""Checks dstack makes when a run is submitted (not when the file is parsed), and the defaults
it fills in then: GPU vendor inference, image requirements, run names, groups references."""

from __future__ import annotations

from dataclasses import replace
import posixpath
from pathlib import PurePosixPath
from typing import List, Optional

from dstack_ray.config.errors import ConfigIssue, ConfigurationError
from dstack_ray.config.gpus import AcceleratorVendor, CPUArchitecture, requested_gpu_vendors
from dstack_ray.config.loader import parse_path
from dstack_ray.config.interpolate import check_groups_refs, contains_groups_ref
from dstack_ray.config.layout import as_host_path, check_target
from dstack_ray.config.profiles import ProfileRetry
from dstack_ray.config.resources import GPUSpec, ResourcesSpec
from dstack_ray.config.task import RUN_NAME_RE, TaskConfiguration

# Vendors whose software the default (CUDA) environment lacks: they need an `image`.
_NEED_IMAGE = {AcceleratorVendor.AMD, AcceleratorVendor.INTEL, AcceleratorVendor.TENSTORRENT}


def inferred_gpu_vendor(gpu: Optional[GPUSpec], image: Optional[str], docker: Optional[bool]) -> Optional[AcceleratorVendor]:
    """dstack's vendor inference: the user's vendor; nvidia for unnamed GPUs without an image;
    the single vendor all named GPUs map to; otherwise none."""
    if gpu is None or gpu.count.max == 0:
        return None
    if gpu.vendor is not None:
        return gpu.vendor
    if not gpu.name:
        return AcceleratorVendor.NVIDIA if image is None and not docker else None
    vendors = set()
    for name in gpu.name:
        found = requested_gpu_vendors(name)
        if not found:
            return None
        vendors |= found
    return vendors.pop() if len(vendors) == 1 else None


def _vendors_needing_image(gpu: Optional[GPUSpec], image: Optional[str], docker: Optional[bool]) -> set:
    if image is not None or docker or gpu is None or gpu.count.max == 0:
        return set()
    if gpu.vendor is not None:
        vendors = {gpu.vendor}
    else:
        vendors = set().union(*(requested_gpu_vendors(n) for n in gpu.name or []))
    return vendors & _NEED_IMAGE


def check_submittable(cfg: TaskConfiguration) -> None:
    """Raise ConfigurationError listing everything dstack would reject at submission."""
    issues: List[ConfigIssue] = []
    if cfg.name is not None and not RUN_NAME_RE.match(cfg.name):
        issues.append(
            ConfigIssue(
                f"Resource name should match regex '{RUN_NAME_RE.pattern}'",
                path="name",
                hint="use 2-41 lowercase letters, digits and dashes, starting with a letter",
            )
        )
    if isinstance(cfg.retry, ProfileRetry) and cfg.retry.duration is not None and cfg.retry.duration < 0:
        issues.append(ConfigIssue("retry.duration cannot be negative", path="retry.duration"))
    for key, value in cfg.env.items():
        if isinstance(value, str) and contains_groups_ref(value):
            issues.append(
                ConfigIssue(
                    "groups IP references are only supported in commands, not in `env`",
                    path=f"env.{key}",
                )
            )
    sizes = [group.nodes for group in cfg.node_groups]
    for g, group in enumerate(cfg.node_groups):
        where = "commands" if cfg.groups is None else f"groups[{g}].commands"
        for i, command in enumerate(group.commands):
            try:
                check_groups_refs(command, sizes)
            except ConfigurationError as e:
                issues.append(ConfigIssue(e.issues[0].message, path=f"{where}[{i}]"))
    issues += _image_requirements(cfg)
    if issues:
        located = [replace(i, line=cfg.source_line(parse_path(i.path))) for i in issues]
        raise ConfigurationError(located, file=cfg.source_file)


def _outside_run(path: str, views: bool) -> Optional[str]:
    """Why `path` (as written in the task) would land outside the run's directories on the
    host, or None: relative paths and `/workflow/...` stay in the working directory, `~/...`
    and `/root/...` in the run's home; with `views` (nodes give jobs a private view) other
    absolute paths are mounted in the job's view."""
    path = as_host_path(path)
    if path.startswith("~") and not (path == "~" or path.startswith("~/")):
        return "`~user` paths are not supported"
    rest = path[2:] if path.startswith("~/") else ("" if path == "~" else path)
    if PurePosixPath(rest).is_absolute():
        return check_target(rest) if views else "it is an absolute path outside the run's directories and no node of the cluster gives jobs a private view"
    if posixpath.normpath(rest or ".").split("/")[0] == "..":
        return "`..` leads outside the run's directories"
    return None


def check_host_paths(cfg: TaskConfiguration, views: bool = False) -> None:
    """Without an image, a task runs on the Ray node in directories of its own: a `files`
    target, repo path or `working_dir` outside them is refused before submission (`views`:
    some node may give jobs a private view, where other absolute paths are mounted)."""
    issues: List[ConfigIssue] = []
    wanted = [(f"files[{i}]", f.path) for i, f in enumerate(cfg.files)]
    wanted += [(f"repos[{i}].path", r.path) for i, r in enumerate(cfg.repos)]
    if cfg.working_dir is not None:
        wanted.append(("working_dir", cfg.working_dir))
    for where, path in wanted:
        why = _outside_run(path, views)
        if why:
            issues.append(
                ConfigIssue(
                    f"{path}: {why}; without `image` the task runs on the Ray node and may only"
                    " write below its working directory (`/workflow` in dstack's layout) or `~`"
                    " (the run's private home; `/root` in dstack's layout)",
                    path=where,
                    hint="use a relative path or `~/...`, or set `image:` to run in a container,"
                    " where any path is allowed",
                )
            )
    if issues:
        located = [replace(i, line=cfg.source_line(parse_path(i.path))) for i in issues]
        raise ConfigurationError(located, file=cfg.source_file)


def _image_requirements(cfg: TaskConfiguration) -> List[ConfigIssue]:
    vendors: set = set()
    arm_groups: List[int] = []
    bad_groups: List[int] = []
    for index, group in enumerate(cfg.node_groups):
        needed = _vendors_needing_image(group.resources.gpu, cfg.image, cfg.docker)
        if needed:
            vendors |= needed
            bad_groups.append(index)
        if group.resources.cpu.arch == CPUArchitecture.ARM:
            arm_groups.append(index)
    issues = []
    where = "resources" if cfg.groups is None else "groups"
    prefix = "" if cfg.groups is None else f"groups{bad_groups}: "
    if vendors:
        issues.append(
            ConfigIssue(
                f"{prefix}`image` must be set when the requested accelerator is not supported by"
                f" the default image: {sorted(v.value for v in vendors)}",
                path=f"{where}.gpu" if cfg.groups is None else where,
                hint="set `image` to the vendor's image (e.g. rocm/pytorch for AMD)",
            )
        )
    if arm_groups:
        prefix = "" if cfg.groups is None else f"groups{arm_groups}: "
        if cfg.docker:
            issues.append(ConfigIssue(f"{prefix}`docker: true` is not supported on ARM CPU", path="docker"))
        elif cfg.image is None:
            issues.append(ConfigIssue(f"{prefix}`image` must be set when ARM CPU requested", path="image"))
    return issues


def with_server_defaults(resources: ResourcesSpec, image: Optional[str], docker: Optional[bool]) -> ResourcesSpec:
    """Resources with the GPU vendor dstack's server would infer filled in."""
    vendor = inferred_gpu_vendor(resources.gpu, image, docker)
    if resources.gpu is None or vendor is None or resources.gpu.vendor is not None:
        return resources
    return resources.model_copy(update={"gpu": resources.gpu.model_copy(update={"vendor": vendor})})
