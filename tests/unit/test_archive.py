"""`files` archives: dstack's packing layout and limit, the runner's unpacking, and the checks
that keep a hostile archive inside its destination."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import List, Optional

import pytest

from dstack_ray.config import ConfigurationError
from dstack_ray.config.files import FilePathMapping
from dstack_ray.exec.archive import (
    DEFAULT_UPLOAD_LIMIT,
    ArchiveTooLarge,
    UnsafeArchive,
    pack,
    pack_files,
    resolve_destination,
    sizeof_fmt,
    unpack,
    upload_limit,
)

LIMIT_ENV = "DSTACK_SERVER_CODE_UPLOAD_LIMIT"


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LIMIT_ENV, raising=False)


def write(path: Path, content: "str | bytes" = "", mode: Optional[int] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    if mode is not None:
        path.chmod(mode)
    return path


def members(data: bytes) -> List[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def names(data: bytes) -> List[str]:
    return [member.name for member in members(data)]


def snapshot(root: Path) -> List[str]:
    """Everything under root, links shown with their targets, for "nothing changed" checks."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            extra = f" -> {os.readlink(path)}" if path.is_symlink() else ""
            if path.is_file() and not path.is_symlink():
                extra = f" = {path.read_bytes()!r}"
            out.append(f"{path.relative_to(root).as_posix()}{extra}")
    return sorted(out)


def tar_bytes(*entries: tarfile.TarInfo, data: Optional[dict] = None) -> bytes:
    """An archive built by hand, for inputs `pack` would never produce."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in entries:
            content = (data or {}).get(info.name)
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else mode
    return info


# --- packing ---------------------------------------------------------------------------


def test_directory_layout_is_sorted_and_relative_to_the_parent(tmp_path: Path) -> None:
    root = tmp_path / "foo"
    for name in ["b.txt", "a/z.txt", "a/b.txt", "a-c.txt", ".hidden"]:
        write(root / name, name)
    write(root / ".git" / "config", "x")
    assert names(pack(root)) == [
        "foo",
        "foo/.hidden",
        "foo/a",
        "foo/a/b.txt",
        "foo/a/z.txt",
        "foo/a-c.txt",
        "foo/b.txt",
    ]


def test_a_single_file_is_packed_under_its_name(tmp_path: Path) -> None:
    write(tmp_path / "dir" / "a.txt", "hello")
    data = pack(tmp_path / "dir" / "a.txt")
    assert names(data) == ["a.txt"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("a.txt").read() == b"hello"  # type: ignore[union-attr]


def test_packing_is_uncompressed_and_reproducible(tmp_path: Path) -> None:
    write(tmp_path / "d" / "x", "1")
    first = pack(tmp_path / "d")
    assert first[257:262] == b"ustar"  # a plain tar header, no gzip
    assert pack(tmp_path / "d") == first


def test_pack_honours_gitignore_and_dstackignore(tmp_path: Path) -> None:
    write(tmp_path / ".gitignore", "*.log\n")  # an ancestor's rules apply too
    root = tmp_path / "proj"
    write(root / ".dstackignore", "data/\n")
    write(root / "sub" / ".gitignore", "!keep.log\n")
    for name in ["main.py", "run.log", "data/big.bin", "sub/keep.log", "sub/x.log"]:
        write(root / name, "x")
    assert names(pack(root)) == [
        "proj",
        "proj/.dstackignore",
        "proj/main.py",
        "proj/sub",
        "proj/sub/.gitignore",
        "proj/sub/keep.log",
    ]


def test_symlinks_inside_stay_links_outside_become_copies(tmp_path: Path) -> None:
    write(tmp_path / "outside.txt", "outside content")
    write(tmp_path / "outside_dir" / "big", "x")
    root = tmp_path / "proj"
    write(root / "real" / "f.txt", "inside")
    os.symlink("real/f.txt", root / "rel_in")
    os.symlink(root / "real" / "f.txt", root / "abs_in")  # made relative
    os.symlink("../outside.txt", root / "rel_out")
    os.symlink(tmp_path / "outside.txt", root / "abs_out")
    os.symlink(tmp_path / "outside_dir", root / "dir_out")
    os.symlink("..", root / "real" / "up")  # the root itself is inside
    data = pack(root)
    by_name = {m.name: m for m in members(data)}
    assert by_name["proj/rel_in"].issym() and by_name["proj/rel_in"].linkname == "real/f.txt"
    assert by_name["proj/abs_in"].issym() and by_name["proj/abs_in"].linkname == "real/f.txt"
    assert by_name["proj/real/up"].issym() and by_name["proj/real/up"].linkname == ".."
    for name in ["proj/rel_out", "proj/abs_out"]:
        assert by_name[name].isreg()
    # dstack adds what an outside directory link points to without its content.
    assert by_name["proj/dir_out"].isdir() and "proj/dir_out/big" not in by_name

    dest = tmp_path / "node" / "proj"
    unpack(data, dest)
    assert (dest / "rel_out").read_text() == "outside content"
    assert not (dest / "rel_out").is_symlink()
    assert os.readlink(dest / "abs_in") == "real/f.txt"
    assert (dest / "abs_in").read_text() == "inside"


def test_a_dangling_link_out_of_the_root_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root / "a", "")
    os.symlink(tmp_path / "missing", root / "broken")
    with pytest.raises(ConfigurationError, match="broken points outside .* which does not exist"):
        pack(root)


def test_permissions_survive_the_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root / "run.sh", "#!/bin/sh\n", mode=0o750)
    write(root / "secret", "s", mode=0o600)
    data = pack(root)
    by_name = {m.name: m for m in members(data)}
    assert by_name["proj/run.sh"].mode == 0o750
    dest = tmp_path / "node" / "out"
    unpack(data, dest)
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "secret").stat().st_mode) == 0o600


def test_hard_links_inside_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root / "a" / "data", "shared")
    os.link(root / "a" / "data", root / "b")
    data = pack(root)
    by_name = {m.name: m for m in members(data)}
    assert by_name["proj/b"].islnk() and by_name["proj/b"].linkname == "proj/a/data"
    dest = tmp_path / "node" / "copy"
    unpack(data, dest)
    assert os.stat(dest / "b").st_ino == os.stat(dest / "a" / "data").st_ino
    assert (dest / "b").read_text() == "shared"


# --- size limit ----------------------------------------------------------------------


def test_upload_limit_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert upload_limit() == DEFAULT_UPLOAD_LIMIT == 2 * 2**20
    monkeypatch.setenv(LIMIT_ENV, "1000")
    assert upload_limit() == 1000
    monkeypatch.setenv(LIMIT_ENV, "0")
    assert upload_limit() == 0
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ConfigurationError, match="DSTACK_SERVER_CODE_UPLOAD_LIMIT must be"):
        upload_limit()


@pytest.mark.parametrize(
    "num,text",
    [
        (0, "0.0B"),
        (1023, "1023.0B"),
        (1024, "1.0KiB"),
        (2 * 2**20, "2.0MiB"),
        (3 * 2**30, "3.0GiB"),
    ],
)
def test_sizeof_fmt_is_dstacks(num: int, text: str) -> None:
    assert sizeof_fmt(num) == text


def test_over_the_default_limit_gives_dstacks_message(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "weights.bin", os.urandom(3 * 2**20))
    with pytest.raises(ArchiveTooLarge) as caught:
        pack(tmp_path / "proj")
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert error.limit == 2 * 2**20 and error.size > 3 * 2**20
    assert str(error) == (
        "Archive size is 3.0MiB, which exceeds the limit of 2.0MiB."
        " Use .gitignore/.dstackignore to exclude large files."
        " This limit can be modified by setting the DSTACK_SERVER_CODE_UPLOAD_LIMIT"
        " environment variable."
    )


def test_sizes_that_format_alike_are_shown_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "f", b"x" * 12000)  # 512 + 12288 + 1024, padded to two 10 KiB records
    monkeypatch.setenv(LIMIT_ENV, "20450")  # formats as 20.0KiB, like 20480
    with pytest.raises(ArchiveTooLarge, match=r"^Archive size is 20480B, .* limit of 20450B\."):
        pack(tmp_path / "f")


def test_env_override_raises_and_zero_disables_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proj" / "weights.bin", os.urandom(3 * 2**20))
    monkeypatch.setenv(LIMIT_ENV, str(4 * 2**20))
    assert len(pack(tmp_path / "proj")) > 3 * 2**20
    monkeypatch.setenv(LIMIT_ENV, "0")
    assert len(pack(tmp_path / "proj")) > 3 * 2**20
    monkeypatch.setenv(LIMIT_ENV, str(2**20))
    with pytest.raises(ArchiveTooLarge, match="exceeds the limit of 1.0MiB"):
        pack(tmp_path / "proj")


# --- pack_files ----------------------------------------------------------------------


def test_pack_files_resolves_paths_and_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "project"
    write(config_dir / "data" / "a.txt", "a")
    write(tmp_path / "home" / ".cache" / "c.txt", "c")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mappings = [
        FilePathMapping.model_validate("data:/opt/data"),
        FilePathMapping.model_validate("~/.cache/c.txt"),
        FilePathMapping.model_validate(f"{config_dir / 'data' / 'a.txt'}:x.txt"),
    ]
    packed = pack_files(mappings, config_dir)
    assert [p.path for p in packed] == ["/opt/data", "~/.cache/c.txt", "x.txt"]
    assert [p.local_path for p in packed] == [
        str(config_dir / "data"),
        str(tmp_path / "home" / ".cache" / "c.txt"),
        str(config_dir / "data" / "a.txt"),
    ]
    assert names(packed[0].data) == ["data", "data/a.txt"]
    assert names(packed[1].data) == ["c.txt"]
    for item in packed:
        assert item.sha256 == hashlib.sha256(item.data).hexdigest()
    # The model survives JSON (bytes as base64), for stores and logs.
    assert type(packed[0]).model_validate_json(packed[0].model_dump_json()) == packed[0]


def test_pack_files_missing_path(tmp_path: Path) -> None:
    write(tmp_path / "here.txt", "")
    mappings = [FilePathMapping.model_validate(p) for p in ["here.txt", "nope/x:/x"]]
    with pytest.raises(ConfigurationError) as caught:
        pack_files(mappings, tmp_path)
    assert caught.value.issues[0].path == "files[1]"
    assert caught.value.issues[0].message == (
        f"Path '{tmp_path / 'nope' / 'x'}' specified in `files` does not exist"
    )


def test_pack_files_too_large_names_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "big", b"x" * 30000)
    monkeypatch.setenv(LIMIT_ENV, "20000")
    with pytest.raises(ArchiveTooLarge) as caught:
        pack_files([FilePathMapping.model_validate("big")], tmp_path)
    assert str(caught.value).startswith("files[0]: Archive size is 40.0KiB, which exceeds")


# --- unpacking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,expected",
    [
        ("~", "/home/u"),
        ("~/", "/home/u"),
        ("~/.cache/x", "/home/u/.cache/x"),
        ("data", "/wd/data"),
        ("./a/../b", "/wd/b"),
        (".", "/wd"),
        ("/opt/x/", "/opt/x"),
    ],
)
def test_resolve_destination(path: str, expected: str) -> None:
    assert resolve_destination(path, Path("/wd"), Path("/home/u")) == Path(expected)


def test_resolve_destination_rejects_tilde_user() -> None:
    with pytest.raises(ValueError, match="~username"):
        resolve_destination("~root/x", Path("/wd"), Path("/home/u"))


def test_unpack_replaces_the_destination_and_renames_the_top_level(tmp_path: Path) -> None:
    write(tmp_path / "src" / "foo" / "new.txt", "new")
    write(tmp_path / "src" / "foo" / "sub" / "deep.txt", "deep")
    dest = tmp_path / "wd" / "bar"
    write(dest / "old.txt", "old")
    unpack(pack(tmp_path / "src" / "foo"), dest)
    assert snapshot(dest) == ["new.txt = b'new'", "sub", "sub/deep.txt = b'deep'"]
    assert sorted(os.listdir(tmp_path / "wd")) == ["bar"]


def test_unpack_a_file_archive_makes_the_destination_a_file(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "content")
    dest = tmp_path / "wd" / "deep" / "renamed.txt"
    write(dest / "was-a-dir", "")
    unpack(pack(tmp_path / "a.txt"), dest)
    assert dest.read_text() == "content"


def test_unpack_replaces_a_symlink_destination_without_touching_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "precious", "keep me")
    write(tmp_path / "src" / "d" / "f", "f")
    dest = tmp_path / "wd" / "d"
    dest.parent.mkdir()
    os.symlink(outside, dest)
    unpack(pack(tmp_path / "src" / "d"), dest)
    assert not dest.is_symlink() and (dest / "f").read_text() == "f"
    assert snapshot(outside) == ["precious = b'keep me'"]


# --- hostile archives ------------------------------------------------------------------


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """tmp_path/outside (must stay untouched) next to tmp_path/wd (where unpacking happens)."""
    write(tmp_path / "outside" / "precious", "keep me")
    (tmp_path / "wd").mkdir()
    return tmp_path


def assert_contained(arena: Path) -> None:
    assert snapshot(arena / "outside") == ["precious = b'keep me'"]
    assert sorted(os.listdir(arena)) == ["outside", "wd"]


HOSTILE = {
    "dotdot": ([entry("top/../../outside/evil")], "contains '..'"),
    "dotdot_first": ([entry("../outside/evil")], "contains '..'"),
    "absolute": ([entry("/tmp/evil-absolute")], "absolute path"),
    "symlink_out_then_write": (
        [entry("top/link", tarfile.SYMTYPE, "../../outside"), entry("top/link/evil")],
        "leads outside the destination",
    ),
    "absolute_symlink": (
        [entry("top/link", tarfile.SYMTYPE, "/etc")],
        "symlink to the absolute path",
    ),
    "hardlink_absolute": (
        [entry("top/h", tarfile.LNKTYPE, "/etc/passwd")],
        "absolute path '/etc/passwd'",
    ),
    "hardlink_dotdot": (
        [entry("top/h", tarfile.LNKTYPE, "top/../../outside/precious")],
        "contains '..'",
    ),
    "hardlink_to_nothing_inside": (
        [entry("top/h", tarfile.LNKTYPE, "top/not-there")],
        "not a file extracted before it",
    ),
    "char_device": ([entry("top/null", tarfile.CHRTYPE)], "device or fifo"),
    "block_device": ([entry("top/sda", tarfile.BLKTYPE)], "device or fifo"),
    "fifo": ([entry("top/pipe", tarfile.FIFOTYPE)], "device or fifo"),
    "top_level_symlink": ([entry("top", tarfile.SYMTYPE, "outside")], "top-level entry"),
    # Each link alone looks inside; together, c leads to the parent of the destination.
    "links_that_escape_together": (
        [
            entry("top/a", tarfile.DIRTYPE),
            entry("top/a/b", tarfile.SYMTYPE, ".."),
            entry("top/c", tarfile.SYMTYPE, "a/b/.."),
        ],
        "resolves outside the destination",
    ),
    # A file whose name goes through a symlink from the same archive.
    "write_through_inside_link": (
        [entry("top/l", tarfile.SYMTYPE, "sub"), entry("top/l/f")],
        "is a directory",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused(arena: Path, case: str) -> None:
    entries, reason = HOSTILE[case]
    data = tar_bytes(*entries, data={e.name: b"evil" for e in entries if e.isreg()})
    dest = arena / "wd" / "dest"
    with pytest.raises(UnsafeArchive, match=reason) as caught:
        unpack(data, dest)
    assert repr(entries[-1].name) in str(caught.value) or any(
        repr(e.name) in str(caught.value) for e in entries
    )
    assert_contained(arena)
    assert not os.path.lexists(dest)
    assert not os.path.exists("/tmp/evil-absolute")


def test_a_refused_archive_leaves_the_old_destination_alone(arena: Path) -> None:
    dest = write(arena / "wd" / "dest" / "old.txt", "old").parent
    data = tar_bytes(entry("top/ok"), entry("top/../x"), data={"top/ok": b"ok"})
    with pytest.raises(UnsafeArchive, match=r"'top/\.\./x'"):
        unpack(data, dest)
    assert snapshot(dest) == ["old.txt = b'old'"]


def test_merging_never_follows_a_pre_existing_link_out(arena: Path) -> None:
    dest = arena / "wd" / "dest"
    dest.mkdir()
    os.symlink(arena / "outside", dest / "sub")
    data = tar_bytes(entry("top/sub/evil"), data={"top/sub/evil": b"evil"})
    with pytest.raises(UnsafeArchive, match="is a symlink on its path"):
        unpack(data, dest, replace=False)
    assert_contained(arena)


def test_merging_never_hard_links_through_a_pre_existing_link(arena: Path) -> None:
    dest = arena / "wd" / "dest"
    dest.mkdir()
    os.symlink(arena / "outside", dest / "sub")
    data = tar_bytes(entry("top/h", tarfile.LNKTYPE, "top/sub/precious"))
    with pytest.raises(UnsafeArchive, match="is a symlink on its path"):
        unpack(data, dest, replace=False)
    assert not os.path.lexists(dest / "h")
    assert_contained(arena)


def test_links_inside_and_hard_links_are_fine(arena: Path) -> None:
    data = tar_bytes(
        entry("top", tarfile.DIRTYPE),
        entry("top/d", tarfile.DIRTYPE),
        entry("top/d/f"),
        entry("top/hard", tarfile.LNKTYPE, "top/d/f"),
        entry("top/rel", tarfile.SYMTYPE, "d/f"),
        entry("top/d/up", tarfile.SYMTYPE, ".."),
        entry("top/dangling", tarfile.SYMTYPE, "d/not-yet"),
        data={"top/d/f": b"data"},
    )
    dest = arena / "wd" / "dest"
    unpack(data, dest)
    assert (dest / "hard").read_text() == "data"
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "d" / "f").st_ino
    assert (dest / "rel").read_text() == "data"
    assert (dest / "d" / "up" / "rel").read_text() == "data"
    assert_contained(arena)


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    data = tar_bytes(entry("top/x", mode=0o4755), data={"top/x": b"x"})
    unpack(data, tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest" / "x").stat().st_mode) == 0o755


def test_relative_destination_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        unpack(b"", Path("relative"))
