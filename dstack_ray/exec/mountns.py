"""Entering a host-mode job's view of its node: mount namespaces through libc.

Runs in the guard's child between fork and exec (see guard.py), so it imports nothing but
`ctypes` and `os`, which the guard has loaded already: making a view costs a few milliseconds
of system calls, not a `mount(8)` process per mount. `exec/view.py` decides what a view holds;
this module only carries it out.

A view is a new root, a tmpfs of the namespace's own, into which each top-level directory of the
node is bind-mounted (with everything mounted below it), except that
- `/workflow` is the job's working directory and `/root` its private home (dstack's layout);
- dstack-ray's state directory is empty but for the job's own directory (and, read-only, the
  node's Python templates);
- directories to hide (Ray's token) are empty;
- absolute `files` targets are bind-mounted from where the node agent staged them. Where a
  target's directory does not exist on the node, the nearest directory that does is replaced in
  the view by a tmpfs holding bind mounts of its entries (the node's tree is never written).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_UNBINDABLE, MS_PRIVATE = 1 << 17, 1 << 18
# statvfs flags of a mount that a user namespace may not drop when remounting it read-only
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))

_libc = None


class ViewError(OSError):
    pass


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _c().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        errno = ctypes.get_errno()
        raise ViewError(errno, f"mount {source or fstype} on {target}: {os.strerror(errno)}")


def _unshare(user: bool) -> None:
    uid, gid = os.getuid(), os.getgid()
    if _c().unshare(CLONE_NEWNS | (CLONE_NEWUSER if user else 0)) != 0:
        errno = ctypes.get_errno()
        raise ViewError(errno, f"unshare: {os.strerror(errno)}")
    if user:  # the job keeps its own uid and gid inside (not root: nothing to gain but mounts)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the node


def _entries(directory: str) -> list:
    """(name, kind, link) of a directory's entries: kind "l" symlink, "d" directory, "f" other."""
    found = []
    for entry in os.scandir(directory):
        if entry.is_symlink():
            found.append((entry.name, "l", os.readlink(entry.path)))
        elif entry.is_dir(follow_symlinks=False):
            found.append((entry.name, "d", ""))
        else:  # a file, device or socket: bound like a file
            found.append((entry.name, "f", ""))
    return found


def _fill(directory: str, source_fd: int, entries: list, skip: tuple = ()) -> None:
    """Bind-mount each entry of the directory behind `source_fd` into `directory` (a tmpfs)."""
    for name, kind, link in entries:
        if name in skip:
            continue
        target = f"{directory}/{name}"
        if kind == "l":
            os.symlink(link, target)
            continue
        if kind == "d":
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
        _mount(f"/proc/self/fd/{source_fd}/{name}", target, None, MS_BIND | MS_REC)


def _shadow(path: str) -> None:
    """Replace a directory of the view by a tmpfs with bind mounts of its entries, so that new
    names can be made in it without touching the node."""
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        entries = _entries(path)
        mode = os.stat(path).st_mode & 0o7777
        _mount("dstack-ray-view", path, "tmpfs", 0, f"mode={mode:o}")
        _fill(path, fd, entries)
    finally:
        os.close(fd)


def _place(root: str, target: str, source: str, writable: tuple) -> None:
    """Bind `source` (a directory or file of the job's) at `target` in the view under `root`."""
    parts = [p for p in target.split("/") if p]
    for i in range(1, len(parts) + 1):
        if os.path.islink(root + "/" + "/".join(parts[:i])):
            raise ViewError(0, f"{target}: {'/' + '/'.join(parts[:i])} is a symbolic link on this node; give the path it points to")
    is_dir = os.path.isdir(source)
    path = root + target
    if os.path.exists(path) and os.path.isdir(path) == is_dir:
        _mount(source, path, None, MS_BIND | MS_REC)
        return
    if os.path.exists(path):
        raise ViewError(0, f"{target}: is a {'file' if is_dir else 'directory'} on this node")
    known = len(parts) - 1
    while known > 0 and not os.path.isdir(root + "/" + "/".join(parts[:known])):
        known -= 1
    nearest = "/" + "/".join(parts[:known])
    if known > 0 and not any(nearest == w or nearest.startswith(w + "/") for w in writable):
        _shadow(root + nearest)  # the node's directory: new names go to the view's tmpfs
    os.makedirs(root + "/" + "/".join(parts[:-1]), exist_ok=True)
    if is_dir:
        os.mkdir(path)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    _mount(source, path, None, MS_BIND | MS_REC)


def _read_only(path: str) -> None:
    locked = 0
    flags = os.statvfs(path).f_flag
    for st, ms in _LOCKED:
        if flags & st:
            locked |= ms
    _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | locked)


def enter(view: dict) -> None:
    """Make this process's view and move into it. `view` (see exec/view.py `JobView.spec`):
    user (bool: a user namespace too), state, own, shared ("" none), hide [dirs], binds
    [[view path, node path], ...], keep [node directories the binds cover that stay visible,
    read-only], cwd (in the view)."""
    _unshare(view["user"])
    state, own, shared = view["state"], view["own"], view["shared"]
    own_fd = os.open(own, os.O_PATH | os.O_DIRECTORY)
    shared_fd = os.open(shared, os.O_PATH | os.O_DIRECTORY) if shared and os.path.isdir(shared) else -1
    _mount("dstack-ray-hidden", state, "tmpfs", 0, "mode=0700,size=1m")
    os.makedirs(own)
    _mount(f"/proc/self/fd/{own_fd}", own, None, MS_BIND | MS_REC)
    os.close(own_fd)
    if shared_fd >= 0:
        os.makedirs(shared, exist_ok=True)
        _mount(f"/proc/self/fd/{shared_fd}", shared, None, MS_BIND | MS_REC)
        os.close(shared_fd)
        _read_only(shared)
    for directory in view["hide"]:
        if os.path.isdir(directory):
            _mount("dstack-ray-hidden", directory, "tmpfs", 0, "mode=0700,size=64k")
    root = state + "/.view"
    os.mkdir(root)
    _mount("dstack-ray-view", root, "tmpfs", 0, "mode=0755")
    _mount(None, root, None, MS_UNBINDABLE)  # the binds below do not copy the view into itself
    names = {target.strip("/").split("/")[0] for target, _ in view["binds"] if target.count("/") == 1}
    top = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        _fill(root, top, _entries("/"), skip=tuple(names))
    finally:
        os.close(top)
    writable = tuple(target for target, source in view["binds"] if os.path.isdir(source))
    for target, source in view["binds"]:
        _place(root, target, source, writable)
    # The job's own directory stays where its venv and scripts name it, even under /root; so do
    # the node's tools there (its Python, PATH entries: read-only).
    for path in (own, shared):
        if path and not os.path.isdir(root + path):
            _place(root, path, path, writable)
    for path in view.get("keep", ()):
        if os.path.isdir(path) and not os.path.isdir(root + path):
            _place(root, path, path, writable)
            _read_only(root + path)
    if _c().chroot(root.encode()) != 0:
        errno = ctypes.get_errno()
        raise ViewError(errno, f"chroot: {os.strerror(errno)}")
    os.chdir(view["cwd"])


def probe(user: bool) -> str:
    """"" where this process may make a view (tried in a child), else why not."""
    _c()  # loaded before the fork: the caller may have threads (a dlopen lock held in one of them)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            _unshare(user)
            _mount("dstack-ray-probe", "/tmp" if os.path.isdir("/tmp") else "/", "tmpfs", 0, "size=4k")
        except BaseException as e:
            os.write(write, str(e).encode()[:500])
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        why = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return "" if status == 0 else (why or f"the probe ended with status {status}")
