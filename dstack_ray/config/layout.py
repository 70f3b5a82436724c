"""dstack's container layout, as a host-mode job gets it without a container."""

DSTACK_WORKFLOW = "/workflow"  # dstack's working directory in its container
DSTACK_HOME = "/root"  # dstack's home in its container


def as_host_path(path: str) -> str:
    """A path written against dstack's container layout, as it is on a host-mode node: under
    `/workflow` relative to the job's working directory, under `/root` in the run's home (`~`).
    Any other path is returned as written."""
    for root, host in ((DSTACK_WORKFLOW, "."), (DSTACK_HOME, "~")):
        if path == root or path.startswith(root + "/"):
            rest = path[len(root):].lstrip("/")
            return f"{host}/{rest}" if rest else host
    return path
