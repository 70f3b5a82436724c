"""A host-mode job's view of its node: other runs' directories and the cluster's secrets hidden.

Jobs on the host run as the Ray worker's user, so file permissions cannot keep one run from
another: without more, a job could read another run's SSH key (and log in to its sshd), write
its control FIFO, or read the head's database and Ray token. Where the node allows a private
mount namespace (the worker runs as root, or unprivileged user namespaces are on), each job
runs in one where
- dstack-ray's state directory is an empty tmpfs except for the job's own directory (its
  working directory, home, venv, shipped files, output) and, read-only, the node's Python
  templates its venv copies pip from: the database, stored logs, payloads and every other run
  are out of sight;
- Ray's token file (`~/.ray`, or RAY_AUTH_TOKEN_PATH's directory) is hidden;
- everything else of the node — its tools, drivers, /dev, /tmp, the network — is as it was.

This hides; it is not a boundary against a job that runs as root and means harm: root can
leave the namespace (`nsenter`) or read other processes through /proc. Runs that must not
reach each other use containers (`image:`). The README says which runs get which.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

logger = logging.getLogger(__name__)

# Run by `unshare` in the job's new mount namespace, then replaced by the job's command.
# $1 state directory, $2 the job's directory in it, $3 read-only directory in it ("" for none),
# $4 the working directory, then directories to hide up to "--", then the command.
SETUP = r"""
set -e
state=$1 own=$2 shared=$3 cwd=$4
shift 4
exec 8<"$own"
if [ -n "$shared" ] && [ -d "$shared" ]; then exec 7<"$shared"; fi
mount -t tmpfs -o mode=0700,size=1m dstack-ray-hidden "$state"
mkdir -p "$own"
mount --no-canonicalize --bind /proc/self/fd/8 "$own"
exec 8<&-
if [ -n "$shared" ] && [ -d /proc/self/fd/7 ]; then
  mkdir -p "$shared"
  mount --no-canonicalize --bind /proc/self/fd/7 "$shared"
  mount -o remount,bind,ro "$shared"
  exec 7<&-
fi
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mount -t tmpfs -o mode=0700,size=64k dstack-ray-hidden "$1"; fi
  shift
done
shift
cd "$cwd"
exec "$@"
"""

OFF_ENV = "DSTACK_RAY_NO_JOB_VIEW"  # "1" in the node's environment: jobs see the node as their user does
NAMESPACE_COMMANDS = (
    # As root: a mount namespace of its own (mounts in it never reach the node's).
    ("unshare", "--mount", "--propagation", "private"),
)


@functools.lru_cache(maxsize=None)
def namespace_prefix() -> Optional[tuple]:
    """The command that gives a process a private mount namespace on this node, or None where
    the node allows none (probed once per process: a mount in a namespace of its own)."""
    if os.environ.get(OFF_ENV) == "1":
        return None  # the node's operator turned views off (measurements, nodes that forbid mounts)
    if os.geteuid() != 0:
        return None  # (unprivileged user namespaces would change the job's uid: not used)
    for command in NAMESPACE_COMMANDS:
        probe = [*command, "/bin/sh", "-c", "mount -t tmpfs -o size=4k probe /mnt 2>/dev/null || mount -t tmpfs -o size=4k probe /tmp"]
        try:
            result = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0:
            return command
        logger.info("no private mount namespace on this node (%s): %s", " ".join(command), result.stderr.decode(errors="replace").strip()[:200])
    return None


def ray_token_dirs(environ: Optional[dict] = None) -> List[str]:
    """The directories holding Ray's token on this node (hidden from jobs)."""
    environ = os.environ if environ is None else environ
    dirs = {str(Path.home() / ".ray")}
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        dirs.add(str(Path(environ["RAY_AUTH_TOKEN_PATH"]).parent))
    return sorted(dirs)


def in_view(
    argv: Sequence[str], state_dir: Path, own: Path, cwd: str, shared: Optional[Path] = None, hide: Sequence[str] = ()
) -> Optional[List[str]]:
    """`argv` wrapped to run in the job's view, or None where the node gives no namespace (the
    job then runs as before, seeing the node's files as its user does)."""
    prefix = namespace_prefix()
    if prefix is None:
        return None
    state, mine = os.path.realpath(state_dir), os.path.realpath(own)
    if not mine.startswith(state + os.sep):
        raise ValueError(f"{own} is not inside the state directory {state_dir}")
    kept = os.path.realpath(shared) if shared is not None else ""
    hidden = [d for d in hide if not d.startswith(state + os.sep) and not (state + os.sep).startswith(d.rstrip("/") + os.sep)]
    return [*prefix, "/bin/sh", "-c", SETUP, "dstack-ray-view", state, mine, kept, cwd, *hidden, "--", *argv]
