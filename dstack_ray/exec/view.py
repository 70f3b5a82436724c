"""A host-mode job's view of its node: dstack's layout, other runs and the cluster's secrets hidden.

dstack runs every job in a container whose working directory is `/workflow` and whose home is
`/root`; configs are written against those paths. Jobs on a Ray node run as the Ray worker's
user, so neither can exist on the node, and file permissions cannot keep one run from another.
Where the node allows a private mount namespace (the worker runs as root, or unprivileged user
namespaces are on), each job — and its sshd with every SSH session — runs in a view where
- `/workflow` is its working directory and `/root` its private home (`HOME=/root`);
- absolute `files` targets elsewhere (`/opt/data/x`) are there, staged in the job's directory
  and mounted in the view only: the node's tree is never written;
- dstack-ray's state directory is empty except for the job's own directory (its venv, shipped
  files, output) and, read-only, the node's Python templates its venv copies pip from: the
  database, stored logs, payloads and every other run are out of sight;
- Ray's token file (`~/.ray`, or RAY_AUTH_TOKEN_PATH's directory) is hidden;
- everything else of the node — its tools, drivers, /dev, /tmp, the network — is as it was.

Where it allows none (a non-root pod without user namespaces), jobs get today's layout: the
working directory and home are directories of the run, `/workflow/x` and `/root/x` targets land
there, other absolute targets are refused (`node_layout()` says which and why; the plan shows it).

This hides; it is not a boundary against a job that runs as root and means harm: root can
leave the namespace (`nsenter`) or read other processes through /proc. Runs that must not
reach each other use containers (`image:`). The README says which runs get which.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from dstack_ray.config.layout import DSTACK_HOME, DSTACK_WORKFLOW
from dstack_ray.exec import mountns

logger = logging.getLogger(__name__)

OFF_ENV = "DSTACK_RAY_NO_JOB_VIEW"  # "1" in the node's environment: jobs see the node as their user does


@dataclass(frozen=True)
class NodeLayout:
    """How host-mode jobs see this node."""

    view: bool  # dstack's layout in a private view; False: the run's directories on the node
    user: bool = False  # the view needs a user namespace (the Ray worker is not root)
    why: str = ""

    def describe(self) -> str:
        if self.view:
            how = "a user namespace" if self.user else "a private mount namespace"
            return f"dstack's layout (/workflow, /root) in {how}"
        return f"the run's directories on the node ({self.why})"


@functools.lru_cache(maxsize=None)
def node_layout() -> NodeLayout:
    """What this node allows (probed once per process, in a child: a namespace and a mount)."""
    if os.environ.get(OFF_ENV) == "1":
        return NodeLayout(False, why=f"{OFF_ENV}=1 on the node")
    user = os.geteuid() != 0
    why = mountns.probe(user)
    if not why:
        return NodeLayout(True, user=user)
    kind = "user namespaces are off" if user else "no private mount namespace"
    logger.info("host-mode jobs get no view on this node (%s): %s", kind, why)
    return NodeLayout(False, why=f"{kind}: {why}")


def ray_token_dirs(environ: Optional[dict] = None) -> List[str]:
    """The directories holding Ray's token on this node (hidden from jobs)."""
    environ = os.environ if environ is None else environ
    dirs = {str(Path.home() / ".ray")}
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        dirs.add(str(Path(environ["RAY_AUTH_TOKEN_PATH"]).parent))
    return sorted(dirs)


@dataclass
class JobView:
    """One job's view: what `mountns.enter` makes in the job's process (and in its sshd's)."""

    state: Path  # dstack-ray's state directory: hidden but for `own` and `shared`
    own: Path  # the job's directory in it (per run and rank)
    workflow: Path  # -> /workflow
    home: Path  # -> /root
    user: bool = False
    shared: Optional[Path] = None  # read-only in the view (the node's Python templates)
    hide: List[str] = field(default_factory=list)
    placed: Dict[str, Path] = field(default_factory=dict)  # other absolute targets -> where staged
    keep: List[str] = field(default_factory=list)  # the node's tools under /root (read-only in the view)

    def path(self, host: Path) -> str:
        """Where a path of the node's is in the view."""
        host = Path(os.path.realpath(host))
        mounted = [(self.workflow, DSTACK_WORKFLOW), (self.home, DSTACK_HOME)] + [(staged, target) for target, staged in self.placed.items()]
        for source, seen in mounted:
            real = Path(os.path.realpath(source))
            if host == real or real in host.parents:
                rest = host.relative_to(real).as_posix()
                return seen if rest == "." else f"{seen}/{rest}"
        return str(host)

    def spec(self, cwd: Path) -> dict:
        """The view as the guard takes it (`--view JSON`): plain paths, no secrets."""
        state, own = os.path.realpath(self.state), os.path.realpath(self.own)
        if not own.startswith(state + os.sep):
            raise ValueError(f"{self.own} is not inside the state directory {self.state}")
        hidden = [d for d in self.hide if not d.startswith(state + os.sep) and not (state + os.sep).startswith(d.rstrip("/") + os.sep)]
        binds = [[DSTACK_WORKFLOW, os.path.realpath(self.workflow)], [DSTACK_HOME, os.path.realpath(self.home)]]
        binds += [[target, os.path.realpath(staged)] for target, staged in sorted(self.placed.items())]
        return {
            "user": self.user,
            "state": state,
            "own": own,
            "shared": os.path.realpath(self.shared) if self.shared is not None else "",
            "hide": hidden,
            "binds": binds,
            "keep": self.keep,
            "cwd": self.path(cwd),
        }


def tools_in_home(environ: Dict[str, str], python_prefix: str) -> List[str]:
    """The node's directories under dstack's home (`/root`, which the view gives the job) that
    jobs still need: its Python (`python_prefix`, pyenv's versions) and its PATH entries there."""
    wanted = [python_prefix, os.path.expanduser("~/.pyenv")]
    wanted += [p for p in environ.get("PATH", "").split(":") if p]
    kept: List[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted}):
        if (path == DSTACK_HOME or not path.startswith(DSTACK_HOME + "/")) or not os.path.isdir(path):
            continue
        if not any(path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept
