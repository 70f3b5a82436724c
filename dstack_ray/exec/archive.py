"""`files` archives: packing on the client (dstack's `create_file_archive`) and unpacking on a node
(the runner's `extractFileArchive`), with the same size limit as dstack's server.

Packing: an uncompressed tar, members sorted, names relative to the packed path's parent (a
directory `foo` becomes `foo/...`), `.gitignore`/`.dstackignore` honoured (see `ignore.py`),
symlinks that stay inside the packed path kept as relative links and the others replaced by a
copy of what they point to.

Unpacking: the destination is replaced, and every member's first path component is renamed to
the destination's name. Unlike the runner, an archive is treated as untrusted input: a member
that would land outside the destination, a link that leads out of it, and device or fifo
entries are refused before anything is written for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import posixpath
import shutil
import tarfile
from pathlib import Path
from typing import List, Tuple

from pydantic import BaseModel, ConfigDict

from dstack_ray.config.errors import ConfigurationError
from dstack_ray.config.files import FilePathMapping
from dstack_ray.exec.ignore import walk

logger = logging.getLogger(__name__)

UPLOAD_LIMIT_ENV = "DSTACK_SERVER_CODE_UPLOAD_LIMIT"
DEFAULT_UPLOAD_LIMIT = 2 * 2**20


class ArchiveTooLarge(ConfigurationError):
    """An archive or repo diff over `upload_limit()`, worded as dstack's server words it."""

    def __init__(self, size: int, limit: int, *, path: str = "") -> None:
        self.size = size
        self.limit = limit
        super().__init__(too_large_message(size, limit), path=path)


class UnsafeArchive(ValueError):
    """An archive member that would write outside the destination or create a special file."""


class PackedFile(BaseModel):
    """One `files` entry, packed on the client and shipped to every node."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    local_path: str  # the resolved path on the client, for messages
    path: str  # the path in the run, as written (resolved on the node)
    sha256: str
    data: bytes


def sizeof_fmt(num: float, suffix: str = "B") -> str:
    """dstack's size formatting (`utils/common.py`), kept identical for identical messages."""
    for unit in ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi"):
        if abs(num) < 1024.0:
            return "%3.1f%s%s" % (num, unit, suffix)
        num /= 1024.0
    return "%.1f%s%s" % (num, "Yi", suffix)


def too_large_message(size: int, limit: int) -> str:
    size_fmt, limit_fmt = sizeof_fmt(size), sizeof_fmt(limit)
    if size_fmt == limit_fmt:
        size_fmt, limit_fmt = f"{size}B", f"{limit}B"
    return (
        f"Archive size is {size_fmt}, which exceeds the limit of {limit_fmt}."
        " Use .gitignore/.dstackignore to exclude large files."
        f" This limit can be modified by setting the {UPLOAD_LIMIT_ENV} environment variable."
    )


def upload_limit() -> int:
    """The most bytes one archive or repo diff may have; 0 means no limit."""
    raw = os.environ.get(UPLOAD_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_UPLOAD_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigurationError(
            f"{UPLOAD_LIMIT_ENV} must be a number of bytes (0 for no limit), got {raw!r}"
        )
    return limit


def check_upload_size(size: int, *, path: str = "") -> None:
    """Raise ArchiveTooLarge when `size` bytes exceed `upload_limit()`."""
    limit = upload_limit()
    if limit and size > limit:
        raise ArchiveTooLarge(size, limit, path=path)


class _CappedBuffer(io.RawIOBase):
    """Keeps what is written while it fits the limit and only counts the rest, so an oversized
    directory is measured exactly (for the message) without being held in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: "bytes | bytearray | memoryview") -> int:  # type: ignore[override]
        length = len(data)
        self.size += length
        if not self.overflowed:
            self._buffer.write(data)
        return length

    def tell(self) -> int:
        return self.size

    @property
    def overflowed(self) -> bool:
        return bool(self.limit) and self.size > self.limit

    def getvalue(self) -> bytes:
        return self._buffer.getvalue()


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def add_to_archive(tar: tarfile.TarFile, path: Path, arcname: str, root: Path) -> None:
    """Add `path` (not what is below it) the way dstack packs: a symlink whose text points inside
    `root` stays a relative link, any other symlink is replaced by a copy of what it points to
    (a directory as an empty one); sockets, devices and fifos are left out with a warning."""
    info = tar.gettarinfo(str(path), arcname)
    if info is not None and info.issym():
        target = posixpath.normpath(posixpath.join(str(path.parent), info.linkname))
        if _is_within(target, str(root)):
            info.linkname = posixpath.relpath(target, str(path.parent))
            tar.addfile(info)
            return
        resolved = path.resolve()
        if not resolved.exists():
            raise ConfigurationError(
                f"Symlink {path} points outside {root} to {info.linkname}, which does not exist",
                hint="Remove the link or list it in .dstackignore",
            )
        path, info = resolved, tar.gettarinfo(str(resolved), arcname)
    if info is not None and info.isreg():
        with open(path, "rb") as fp:
            tar.addfile(info, fp)
    elif info is not None and (info.isdir() or info.islnk()):
        tar.addfile(info)
    else:
        # Nodes refuse devices and fifos (see unpack); leaving them out here keeps a stray fifo
        # in a project folder from failing every run.
        logger.warning("Not packing %s: not a regular file, directory or symlink", path)


def pack(local: Path) -> bytes:
    """`local` (a file or directory) as an uncompressed tar, dstack's layout and ignore rules.

    Raises ArchiveTooLarge over `upload_limit()`, ConfigurationError for a link that leads
    outside `local` to nothing.
    """
    root = Path(os.path.abspath(local))
    buffer = _CappedBuffer(upload_limit())
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in walk(root):
            add_to_archive(tar, path, path.relative_to(root.parent).as_posix(), root)
    if buffer.overflowed:
        raise ArchiveTooLarge(buffer.size, buffer.limit)
    return buffer.getvalue()


def pack_files(mappings: List[FilePathMapping], config_dir: Path) -> List[PackedFile]:
    """Pack every `files` entry; relative local paths are relative to the configuration's folder."""
    packed: List[PackedFile] = []
    for index, mapping in enumerate(mappings):
        where = f"files[{index}]"
        local = Path(mapping.local_path).expanduser()
        if not local.is_absolute():
            local = Path(config_dir) / local
        local = Path(os.path.abspath(local))
        if not local.exists():
            raise ConfigurationError(
                f"Path '{local}' specified in `files` does not exist", path=where
            )
        try:
            data = pack(local)
        except ArchiveTooLarge as error:
            raise ArchiveTooLarge(error.size, error.limit, path=where) from None
        except ConfigurationError as error:
            raise ConfigurationError(
                [dataclasses.replace(issue, path=where) for issue in error.issues]
            ) from None
        packed.append(
            PackedFile(
                local_path=str(local),
                path=mapping.path,
                sha256=hashlib.sha256(data).hexdigest(),
                data=data,
            )
        )
    return packed


def resolve_destination(path: str, working_dir: Path, home: Path) -> Path:
    """The runner's path expansion: `~` and `~/x` are in `home`, relative paths in `working_dir`.
    `~` is expanded before `..` is resolved (`~/../x` is next to the home, not `x`)."""
    if path == "~" or path.startswith("~/"):
        return Path(posixpath.normpath(posixpath.join(str(home), path[2:])))
    if path.startswith("~"):
        raise ValueError(f"{path}: `~username` paths are not supported")
    return Path(posixpath.normpath(posixpath.join(str(working_dir), path)))


def _member_parts(member: tarfile.TarInfo, name: str) -> Tuple[str, ...]:
    """`name` (a member's name or hard link target) below the destination: its first component
    dropped, since that one becomes the destination itself."""
    if name.startswith("/"):
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: absolute path {name!r}")
    if "\0" in name:
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: NUL in its path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: {name!r} contains '..'")
    return tuple(parts[1:])


def _validate(member: tarfile.TarInfo, destination: Path) -> Tuple[str, ...]:
    """The checks that need only the archive: names, types, where symlinks point (as text)."""
    parts = _member_parts(member, member.name)
    if member.issparse():
        # `pack` never writes sparse members; one from elsewhere would unpack dense (a 10 KB
        # archive can declare terabytes).
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: sparse file")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: device or fifo")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: unsupported file type")
    if member.islnk() and not _member_parts(member, member.linkname):
        raise UnsafeArchive(
            f"Refusing archive member {member.name!r}: hard link to the archive's top-level entry"
        )
    if member.issym():
        if not parts:
            raise UnsafeArchive(
                f"Refusing archive member {member.name!r}: the top-level entry is a symlink"
            )
        if member.linkname.startswith("/"):
            raise UnsafeArchive(
                f"Refusing archive member {member.name!r}: symlink to the absolute path"
                f" {member.linkname!r}"
            )
        target = posixpath.normpath(
            posixpath.join(str(destination), *parts[:-1], member.linkname)
        )
        if not _is_within(target, str(destination)):
            raise UnsafeArchive(
                f"Refusing archive member {member.name!r}: symlink to {member.linkname!r}"
                " leads outside the destination"
            )
    return parts


def _check_no_symlink_on_the_way(destination: Path, parts: Tuple[str, ...], member: str) -> None:
    """Refuse to go through a symlink below the destination (one that was there before or one
    from the archive), so that no write is redirected out of it."""
    current = destination
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise UnsafeArchive(
                f"Refusing archive member {member!r}: {current} is a symlink on its path"
            )


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _clear_for(member: tarfile.TarInfo, target: Path) -> None:
    """Make room for a non-directory member (a later member of the same name wins, as in tar)."""
    if target.is_dir() and not target.is_symlink():
        raise UnsafeArchive(f"Refusing archive member {member.name!r}: {target} is a directory")
    if os.path.lexists(target):
        target.unlink()


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    _clear_for(member, target)
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        shutil.copyfileobj(source, out)
    os.chmod(target, member.mode & 0o777)
    os.utime(target, (member.mtime, member.mtime))


def _extract(
    tar: tarfile.TarFile,
    members: List[Tuple[tarfile.TarInfo, Tuple[str, ...]]],
    destination: Path,
) -> None:
    """Write the checked members. Symlinks come last, so nothing is written through one, and
    directory modes after everything, so a read-only directory still receives its content."""
    links: List[Tuple[tarfile.TarInfo, Tuple[str, ...]]] = []
    directories: List[Tuple[tarfile.TarInfo, Path]] = []
    for member, parts in members:
        if member.issym():
            links.append((member, parts))
            continue
        target = destination.joinpath(*parts)
        _check_no_symlink_on_the_way(destination, parts, member.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if member.isdir():
            target.mkdir(exist_ok=True)
            directories.append((member, target))
        elif member.islnk():
            source_parts = _member_parts(member, member.linkname)
            _check_no_symlink_on_the_way(destination, source_parts, member.name)
            source = destination.joinpath(*source_parts)
            if not source.is_file():
                raise UnsafeArchive(
                    f"Refusing archive member {member.name!r}: hard link to {member.linkname!r},"
                    " which is not a file extracted before it"
                )
            _clear_for(member, target)
            os.link(source, target, follow_symlinks=False)
        else:
            _write_file(tar, member, target)

    for member, parts in links:
        _check_no_symlink_on_the_way(destination, parts[:-1], member.name)
        target = destination.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        _clear_for(member, target)
        os.symlink(member.linkname, target)
    # The text check in _validate cannot see links that only escape together
    # (`a/b -> ..` and `c -> a/b/..`): once all exist, each must really resolve inside.
    real_destination = os.path.realpath(destination)
    for member, parts in links:
        resolved = os.path.realpath(destination.joinpath(*parts))
        if not _is_within(resolved, real_destination):
            raise UnsafeArchive(
                f"Refusing archive member {member.name!r}: symlink to {member.linkname!r}"
                " resolves outside the destination"
            )
    for member, path in reversed(directories):
        os.chmod(path, member.mode & 0o777)
        os.utime(path, (member.mtime, member.mtime))


def unpack(data: bytes, destination: Path, *, replace: bool = True) -> None:
    """Extract a `pack` archive so that its top-level entry becomes `destination`.

    With `replace` (the runner's semantics for `files`) whatever is at `destination` is removed
    first; without it the content is merged into an existing directory (a repo tree going into
    a checkout directory that may be a mount point). `destination` must be absolute.

    Raises UnsafeArchive for a member with an absolute name or a `..`, a link that leads
    outside `destination`, a device or a fifo. Every check that needs only the archive runs
    before anything is touched; if a later one fails, what was extracted is removed.
    """
    destination = Path(destination)
    if not destination.is_absolute():
        raise ValueError(f"destination must be absolute: {destination}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = [(member, _validate(member, destination)) for member in tar.getmembers()]
        if replace:
            _remove(destination)
        existed = os.path.lexists(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            _extract(tar, members, destination)
        except BaseException:
            if not existed:
                _remove(destination)
            raise


__all__ = [
    "ArchiveTooLarge",
    "DEFAULT_UPLOAD_LIMIT",
    "PackedFile",
    "UPLOAD_LIMIT_ENV",
    "UnsafeArchive",
    "add_to_archive",
    "check_upload_size",
    "pack",
    "pack_files",
    "resolve_destination",
    "sizeof_fmt",
    "too_large_message",
    "unpack",
    "upload_limit",
]
