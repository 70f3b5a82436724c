"""dstack-ray's own code, packed on the client for a cluster that has only Ray.

Ray installs a job's runtime environment on every node where the job's actors and tasks run,
also on nodes the autoscaler adds later, and caches it per node. The service job is submitted
with one: its `py_modules` hold

- the code bundle: the client's `dstack_ray` package and the pure-Python packages it needs that
  Ray does not bring (croniter and its dependencies, nvidia-ml-py), always;
- a dependency bundle, only when the cluster's Python lacks (or has too old) a package Ray's
  `default` extra normally brings (see `preflight.NODE_NEEDS`): the client's own installed copy
  with its dependencies, when the client's Python matches the cluster's (interpreter, version
  and platform), else nothing: the job then asks Ray to pip-install them on the nodes.

A bundle is a zip whose root goes on the PYTHONPATH of the job's processes; its name is the hash
of its contents, so a cluster that has it is not sent it again. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import dstack_ray
from dstack_ray.errors import DstackRayError

# Pure-Python distributions the nodes need that Ray does not depend on (always shipped).
SHIPPED = ("croniter", "nvidia-ml-py")
# Files a node never needs: bytecode (written there per Python version), and the top-level
# `example.py` nvidia-ml-py installs next to pynvml.
_SKIPPED_PARTS = {"__pycache__"}
_SKIPPED_TOP = {"example.py"}
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same files always give the same hash


@dataclass
class Bundle:
    """Files to put on the nodes' PYTHONPATH: {path in the zip: file on this machine}."""

    what: str
    files: Dict[str, Path] = field(default_factory=dict)

    def add_tree(self, root: Path, prefix: str) -> None:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not _SKIPPED_PARTS & set(relative.parts) and path.suffix != ".pyc":
                self.files[f"{prefix}/{relative.as_posix()}"] = path

    def add_distribution(self, dist: metadata.Distribution) -> None:
        for entry in dist.files or ():
            name = entry.as_posix()
            if name in _SKIPPED_TOP or _SKIPPED_PARTS & set(entry.parts) or name.endswith(".pyc"):
                continue
            source = Path(str(dist.locate_file(entry)))
            if not source.is_file():
                continue
            if name.startswith(".."):  # outside site-packages: only programs (uv's), as `bin/` next to
                if entry.parent.name == "bin" and _is_program(source):  # the package (where `pip
                    self.files[f"bin/{entry.name}"] = source  # install --target` puts them)
                continue
            self.files[name] = source

    def zip_bytes(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (0o755 if os.access(self.files[name], os.X_OK) else 0o644) << 16
                archive.writestr(info, self.files[name].read_bytes())
        return out.getvalue()

    def packed(self) -> Tuple[str, bytes]:
        """(Ray's package URI, the zip): `gcs://_ray_pkg_<hash>.zip`, as Ray names uploads."""
        data = self.zip_bytes()
        return f"gcs://_ray_pkg_dstack_{hashlib.sha256(data).hexdigest()[:24]}.zip", data

    def top_level(self) -> List[Path]:
        """The bundle's top-level packages, modules and metadata directories on this machine
        (for `ray.init`'s py_modules, which uploads each itself)."""
        roots: Dict[str, Path] = {}
        for name, source in self.files.items():
            first = name.split("/", 1)[0]
            if first in roots or first == "bin":
                continue
            depth = name.count("/")
            roots[first] = source.parents[depth - 1] if depth else source
        return [roots[k] for k in sorted(roots)]


def _is_program(path: Path) -> bool:
    """A compiled executable (not a script, whose first line names this machine's Python)."""
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def package_dir() -> Path:
    """The `dstack_ray` package this client runs."""
    return Path(dstack_ray.__file__).resolve().parent


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: Iterable[str]) -> List[metadata.Distribution]:
    """The installed distributions `names` and everything they require (markers evaluated for
    this Python; extras are not followed)."""
    from packaging.requirements import Requirement

    seen: Set[str] = set()
    found: List[metadata.Distribution] = []
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise DstackRayError(
                f"dstack-ray's dependency {name} is not installed on this machine", hint="reinstall dstack-ray here"
            ) from None
        found.append(dist)
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def is_pure(dist: metadata.Distribution) -> bool:
    return "Root-Is-Purelib: true" in (dist.read_text("WHEEL") or "")


def code_bundle() -> Bundle:
    """dstack-ray and its pure-Python dependencies that Ray does not bring."""
    bundle = Bundle("dstack-ray")
    bundle.add_tree(package_dir(), "dstack_ray")
    for dist in closure(SHIPPED):
        if not is_pure(dist):  # a new dependency with compiled parts must be added to NODE_NEEDS instead
            raise DstackRayError(f"{dist.metadata['Name']} has compiled parts and cannot be shipped to every node")
        bundle.add_distribution(dist)
    return bundle


def dependency_bundle(names: Iterable[str]) -> Bundle:
    """The client's installed copies of `names` with everything they require."""
    bundle = Bundle("dependencies")
    for dist in closure(names):
        bundle.add_distribution(dist)
    return bundle


def requirement_specs(missing: List[dict]) -> List[str]:
    """pip requirements for the packages a cluster lacks (from the preflight report)."""
    return [f"{item['name']}{item.get('wanted') or ''}" for item in missing]


def describe_missing(missing: List[dict]) -> str:
    return ", ".join(
        f"{item['name']}{item.get('wanted') or ''} (found {item['found']})" if item.get("found") else f"{item['name']}{item.get('wanted') or ''}"
        for item in missing
    )


def matches_here(platform: Optional[str]) -> bool:
    from dstack_ray.service.preflight import platform_tag

    return platform == platform_tag()
