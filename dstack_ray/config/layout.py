"""dstack's container layout, as a host-mode job gets it without a container."""

import posixpath

DSTACK_WORKFLOW = "/workflow"  # dstack's working directory in its container
DSTACK_HOME = "/root"  # dstack's home in its container
RESERVED = ("/proc", "/sys", "/dev")  # where a job's view cannot mount a `files` target


def as_host_path(path: str) -> str:
    """A path written against dstack's container layout, as it is on a host-mode node: under
    `/workflow` relative to the job's working directory, under `/root` in the run's home (`~`).
    Any other path is returned as written (an absolute one normalized first: `/workflow/../etc`
    is `/etc`, as in dstack's container)."""
    if path.startswith("/"):
        path = posixpath.normpath(path)
    for root, host in ((DSTACK_WORKFLOW, "."), (DSTACK_HOME, "~")):
        if path == root or path.startswith(root + "/"):
            rest = path[len(root):].lstrip("/")
            return f"{host}/{rest}" if rest else host
    return path


def check_target(path: str) -> "str | None":
    """Why an absolute path cannot be mounted in a host-mode job's view, or None."""
    clean = posixpath.normpath(path)
    if clean == "/":
        return "the root directory cannot be replaced"
    if any(clean == r or clean.startswith(r + "/") for r in RESERVED):
        return f"/{clean.split('/')[1]} is the node kernel's; choose another path"
    return None
