"""The `repos` entry: what the client ships (dstack's `RemoteRepo.from_dir`/`from_url`) and the
checkout on a node (the runner's `setupRepo`).

A local repo travels as its tracking branch (remote URL, branch, the remote-tracking commit)
plus the diff of the working tree against that commit, so unpushed commits, uncommitted
changes and untracked files all arrive. Nodes clone the remote and apply the diff. Since a Ray
node may not reach the remote (or have its credentials), the client also ships the working
tree itself when it fits the upload limit; a node that cannot clone falls back to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Literal, Optional, Sequence, Set

from pydantic import BaseModel, ConfigDict

from dstack_ray.config.errors import ConfigurationError
from dstack_ray.config.repos import COMMIT_RE, RepoExistsAction, RepoSpec
from dstack_ray.exec.archive import (
    add_to_archive,
    check_upload_size,
    resolve_destination,
    unpack,
    upload_limit,
)
from dstack_ray.exec.ignore import DSTACKIGNORE, IgnoreFilter
from dstack_ray.models.secrets import redact_url

logger = logging.getLogger(__name__)

LOCAL_GIT_TIMEOUT_S = 120
"""For git commands that only read the local repo."""
REMOTE_GIT_TIMEOUT_S = 1800
"""For clone and fetch: large repos over slow links take a while, a hung server must not
hold a run forever."""

_WHERE = "repos[0]"


class RepoError(RuntimeError):
    """The repo could not be checked out on a node; the message says why."""


class RepoPayload(BaseModel):
    """What the client ships for the run's `repos` entry."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    kind: Literal["local", "url"]
    url: Optional[str] = None  # the clone URL
    branch: Optional[str] = None
    commit: Optional[str] = None  # the commit to check out
    diff: bytes = b""  # `git diff <commit> --binary` plus untracked files; applied after checkout
    tree: Optional[bytes] = None  # the working tree as a tar, for nodes that cannot clone
    path: str = "."  # where the repo goes, relative to the working directory
    if_exists: RepoExistsAction = RepoExistsAction.ERROR
    single_branch: bool = True
    user_name: Optional[str] = None
    user_email: Optional[str] = None
    repo_id: str = "none"  # DSTACK_REPO_ID


def repo_id_for(url: str) -> str:
    """dstack's repo id: `<repo name>-<first 8 hex of sha256("host/owner/name")>`, from the clone
    URL (`https://host/owner/name.git`, `git@host:owner/name.git`, `file:///path/name`)."""
    text = url.strip()
    scp = re.match(r"^(?:[^@/]+@)?([^:/]+):(?!//)(.*)$", text)
    if "://" in text:
        _, _, rest = text.partition("://")
        host, _, path = rest.partition("/")
        host = host.rpartition("@")[2]
    elif scp:
        host, path = scp.group(1), scp.group(2)
    else:
        host, path = "", text
    path = path.strip("/").removesuffix(".git")
    name = path.rsplit("/", 1)[-1] or "repo"
    digest = hashlib.sha256(f"{host}/{path}".encode()).hexdigest()[:8]
    return f"{name}-{digest}"


class _GitFailed(Exception):
    def __init__(self, args: Sequence[str], detail: str) -> None:
        super().__init__(redact_url(f"`git {_subcommand(args)}` failed: {detail}"))


def _subcommand(args: Sequence[str]) -> str:
    """`clone` for `-c k=v clone --quiet ...`: enough to say which step failed."""
    index = 0
    while index < len(args) and args[index] == "-c":
        index += 2
    return args[index] if index < len(args) else ""


def _kill(process: "subprocess.Popen[bytes]") -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _git_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # fail instead of waiting for a password nobody types
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def _git(
    args: Sequence[str],
    cwd: Path,
    *,
    timeout: float = LOCAL_GIT_TIMEOUT_S,
    input: Optional[bytes] = None,
    ok_codes: Sequence[int] = (0,),
) -> bytes:
    """Run git and return its stdout; _GitFailed with git's own message otherwise."""
    try:
        # A session of its own, so a timeout also ends git's helpers (ssh, remote-https),
        # which would otherwise keep the pipes open.
        process = subprocess.Popen(
            ["git", *args],
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_git_env(),
            start_new_session=True,
        )
    except FileNotFoundError:
        raise _GitFailed(args, "the `git` command is not installed") from None
    try:
        stdout, stderr_bytes = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        process.communicate()
        raise _GitFailed(args, f"timed out after {timeout:.0f}s") from None
    except BaseException:
        _kill(process)
        process.wait()
        raise
    if process.returncode not in ok_codes:
        stderr = stderr_bytes.decode(errors="replace").strip()
        detail = stderr.splitlines()[-1] if stderr else f"exit code {process.returncode}"
        raise _GitFailed(args, detail)
    return stdout


def _git_text(args: Sequence[str], cwd: Path) -> Optional[str]:
    """One line of git output, or None when git says no (e.g. an unset config key)."""
    try:
        return _git(args, cwd).decode(errors="surrogateescape").strip() or None
    except _GitFailed:
        return None


# Settings that change what `git diff` prints; a patch must look the same for every user.
_PLAIN_DIFF = [
    "-c", "diff.noprefix=false",
    "-c", "diff.mnemonicPrefix=false",
    "-c", "diff.relative=false",
    "diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", "--submodule=short",
    "--src-prefix=a/", "--dst-prefix=b/",
]  # fmt: skip


def _repo_diff(repo_dir: Path, commit: str, untracked: List[str]) -> bytes:
    """dstack's `_repo_diff_verbose`: the tree against `commit`, then each untracked file."""
    chunks = [_git([*_PLAIN_DIFF, commit], repo_dir)]
    for name in untracked:
        # `--no-index` exits 1 when the files differ, which they always do.
        no_index = [*_PLAIN_DIFF, "--no-index", "/dev/null", name]
        chunks.append(_git(no_index, repo_dir, ok_codes=(0, 1)))
    return b"".join(chunks)


def _points_inside(link: Path, root: Path) -> bool:
    target = os.path.normpath(os.path.join(link.parent, os.readlink(link)))
    return target == str(root) or target.startswith(str(root) + os.sep)


def _working_tree(repo_dir: Path, untracked: List[str]) -> Optional[bytes]:
    """Tracked and untracked-not-ignored files as a tar (top-level entry = the repo dir),
    `.dstackignore` honoured; None when larger than the upload limit."""
    tracked = _git(["ls-files", "-z", "--cached"], repo_dir).decode(errors="surrogateescape")
    names = sorted({name for name in tracked.split("\0") if name} | set(untracked))
    rules = IgnoreFilter(repo_dir, names=(DSTACKIGNORE,))
    limit = upload_limit()
    buffer = io.BytesIO()
    directories: Set[PurePosixPath] = set()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add_to_archive(tar, repo_dir, repo_dir.name, repo_dir)
        for name in names:
            path = repo_dir / name
            if not os.path.lexists(path) or (path.is_dir() and not path.is_symlink()):
                continue  # deleted in the working tree, or a submodule
            if rules.excluded(path):
                continue
            if path.is_symlink() and not _points_inside(path, repo_dir):
                # A clone would recreate such a link, but nodes refuse archives with links
                # that leave their destination; the tree is a fallback, so leave it out.
                logger.warning("Not shipping %s in the working tree: it links outside", path)
                continue
            for parent in reversed(PurePosixPath(name).parents[:-1]):  # for their modes
                if parent not in directories:
                    directories.add(parent)
                    add_to_archive(tar, repo_dir / parent, f"{repo_dir.name}/{parent}", repo_dir)
            add_to_archive(tar, path, f"{repo_dir.name}/{name}", repo_dir)
            if limit and buffer.tell() > limit:
                return None
    data = buffer.getvalue()
    return None if limit and len(data) > limit else data


def _local_repo_error(message: str, hint: Optional[str] = None) -> ConfigurationError:
    return ConfigurationError(message, path=_WHERE, hint=hint)


def _prepare_local(spec: RepoSpec, config_dir: Path, single_branch: bool) -> RepoPayload:
    assert spec.local_path is not None
    original = spec.local_path
    repo_dir = Path(original).expanduser()
    if not repo_dir.is_absolute():
        repo_dir = (Path(config_dir) / repo_dir).resolve()
    if not repo_dir.exists():
        raise _local_repo_error(f"Invalid repo path: {original} -> {repo_dir}")
    if not repo_dir.is_dir():
        raise _local_repo_error(f"Path is not a directory: {repo_dir}")
    top = _git_text(["rev-parse", "--show-toplevel"], repo_dir)
    if top is None:
        raise _local_repo_error(
            f"Git repo not found: {repo_dir}",
            hint="Use `files` to mount an arbitrary directory",
        )
    if Path(top).resolve() != repo_dir.resolve():
        raise _local_repo_error(
            f"Git repo not found: {repo_dir} is inside the repo at {top}",
            hint=f"Use `local_path: {top}`, or `files` to ship only this directory",
        )
    branch = _git_text(["symbolic-ref", "--quiet", "--short", "HEAD"], repo_dir)
    if branch is None:
        raise _local_repo_error(
            f"Git repo in 'detached HEAD' state: {repo_dir}", hint="Check out to a branch"
        )
    remote = _git_text(["config", "--get", f"branch.{branch}.remote"], repo_dir)
    merge = _git_text(["config", "--get", f"branch.{branch}.merge"], repo_dir)
    push_hint = f"Push it with `git push -u <remote> {branch}`"
    if remote is None or merge is None:
        raise _local_repo_error("No remote branch is configured", hint=push_hint)
    url = _git_text(["config", "--get", f"remote.{remote}.url"], repo_dir)
    if url is None:
        raise _local_repo_error(
            f"Branch '{branch}' tracks '{remote}', which is not a remote with a URL",
            hint=push_hint,
        )
    commit = _git_text(["rev-parse", "--verify", "--quiet", f"{branch}@{{upstream}}"], repo_dir)
    if commit is None:
        raise _local_repo_error(
            f"The upstream of '{branch}' ({remote}/{merge.removeprefix('refs/heads/')})"
            " is not known locally",
            hint=f"Run `git fetch {remote}`, or push the branch",
        )

    untracked_raw = _git(["ls-files", "-z", "--others", "--exclude-standard"], repo_dir)
    untracked = [
        name
        for name in untracked_raw.decode(errors="surrogateescape").split("\0")
        # A nested repo shows up as `dir/`; git cannot diff a directory (dstack skips it too).
        if name and not name.endswith("/")
    ]
    try:
        diff = _repo_diff(repo_dir, commit, untracked)
    except _GitFailed as error:
        raise _local_repo_error(f"Could not compute the local changes in {repo_dir}: {error}")
    check_upload_size(len(diff), path=_WHERE)
    return RepoPayload(
        kind="local",
        url=url,
        branch=merge.removeprefix("refs/heads/"),
        commit=commit,
        diff=diff,
        tree=_working_tree(repo_dir, untracked),
        path=spec.path,
        if_exists=spec.if_exists,
        single_branch=single_branch,
        user_name=_git_text(["config", "--get", "user.name"], repo_dir),
        user_email=_git_text(["config", "--get", "user.email"], repo_dir),
        repo_id=repo_id_for(url),
    )


def prepare_repo(spec: RepoSpec, config_dir: Path, single_branch: Optional[bool]) -> RepoPayload:
    """The payload for a `repos` entry, built on the client.

    A local repo must be a git repo's top-level directory on a branch that tracks a remote
    branch; ConfigurationError says what to fix otherwise, and ArchiveTooLarge when its diff
    exceeds the upload limit. `single_branch=None` means dstack's default for tasks (True).
    """
    single = True if single_branch is None else single_branch
    if spec.url:
        return RepoPayload(
            kind="url",
            url=spec.url,
            branch=spec.branch,
            commit=spec.hash,
            path=spec.path,
            if_exists=spec.if_exists,
            single_branch=single,
            repo_id=repo_id_for(spec.url),
        )
    return _prepare_local(spec, config_dir, single)


def _is_empty(directory: Path) -> bool:
    """The runner's rule: no entries, or only the `lost+found` of a fresh volume."""
    names = os.listdir(directory)
    return not names or names == ["lost+found"]


def _checkout(payload: RepoPayload, clone_dir: Path, log: Callable[[str], None]) -> None:
    """Clone into the empty `clone_dir`, check out the commit, apply the diff."""
    assert payload.url is not None
    # The configuration checks these; the node checks again before they reach git's argv,
    # where `--upload-pack=<command>` as a "commit" would run a command.
    if payload.commit is not None and not COMMIT_RE.fullmatch(payload.commit):
        raise _GitFailed(["checkout"], f"invalid commit hash {payload.commit[:16]!r}")
    if payload.branch is not None and payload.branch.startswith("-"):
        raise _GitFailed(["clone"], f"invalid branch {payload.branch[:16]!r}")
    args = ["clone", "--quiet"]
    if payload.branch:
        args += ["--branch", payload.branch]
    if payload.single_branch:
        args.append("--single-branch")
    log(f"Cloning {redact_url(payload.url)}" + (f" ({payload.branch})" if payload.branch else ""))
    args += ["--", payload.url, str(clone_dir)]
    _git(args, clone_dir.parent, timeout=REMOTE_GIT_TIMEOUT_S)
    if payload.commit:
        head = _git_text(["rev-parse", "HEAD"], clone_dir)
        if head is None or not head.startswith(payload.commit):
            checkout = ["-c", "advice.detachedHead=false", "checkout", "--quiet", payload.commit]
            try:
                _git(checkout, clone_dir)
            except _GitFailed:
                # Not on the cloned branch (a single-branch clone, or a hash from elsewhere).
                fetch = ["fetch", "--quiet", "origin", payload.commit]
                _git(fetch, clone_dir, timeout=REMOTE_GIT_TIMEOUT_S)
                _git(checkout, clone_dir)
    if (clone_dir / ".gitmodules").exists():
        submodules = ["submodule", "update", "--init", "--recursive"]
        _git(submodules, clone_dir, timeout=REMOTE_GIT_TIMEOUT_S)
    if payload.user_name:
        _git(["config", "user.name", payload.user_name], clone_dir)
    if payload.user_email:
        _git(["config", "user.email", payload.user_email], clone_dir)
    if payload.diff:
        _git(["apply", "--whitespace=nowarn", "-"], clone_dir, input=payload.diff)


def _clear(directory: Path) -> None:
    """Remove what a failed extraction left, keeping a volume's `lost+found`."""
    for name in os.listdir(directory):
        path = directory / name
        if name == "lost+found":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _move_content(source: Path, target: Path) -> None:
    for name in os.listdir(source):
        os.rename(source / name, target / name)


def materialize_repo(
    payload: RepoPayload,
    working_dir: Path,
    log: Callable[[str], None],
    *,
    home: Optional[Path] = None,
) -> Path:
    """Check the repo out on this node and return its directory (the runner's `setupRepo`).

    The target (`payload.path` in `working_dir`; `~` is `home`, the current user's by default)
    must be empty or missing unless `if_exists: skip`. The clone happens in a scratch directory
    inside the target and moves into place only once checkout and diff succeeded, so a failure
    leaves the target as it was. A local repo whose clone fails falls back to the shipped tree.
    Raises RepoError ("Failed to set up the repo (...)") otherwise.
    """
    try:
        target = resolve_destination(payload.path, Path(working_dir), home or Path.home())
        return _materialize(payload, target, log)
    except (OSError, ValueError) as error:  # a path that cannot be used, a full disk...
        raise RepoError(f"Failed to set up the repo ({error})") from None


def _materialize(payload: RepoPayload, target: Path, log: Callable[[str], None]) -> Path:
    if os.path.lexists(target) and not target.is_dir():
        raise RepoError(f"Failed to set up the repo (repo dir {target} is not a directory)")
    if target.is_dir() and not _is_empty(target):
        if payload.if_exists == RepoExistsAction.SKIP:
            log(f"Skipping repo checkout: repo dir {target} is not empty")
            return target
        raise RepoError(
            f"Failed to set up the repo (repo dir {target} exists and is not empty;"
            " set `if_exists: skip` in `repos` to use what is there)"
        )
    target.mkdir(parents=True, exist_ok=True)

    failure = "no clone URL"
    if payload.url is not None:
        scratch = Path(tempfile.mkdtemp(prefix=".dstack-clone-", dir=target))
        try:
            _checkout(payload, scratch / "repo", log)
            _move_content(scratch / "repo", target)
            return target
        except _GitFailed as error:
            failure = str(error)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    if payload.tree is None:
        why = ""
        if payload.kind == "local":
            why = "; the working tree was over the upload limit, so none was shipped instead"
        raise RepoError(f"Failed to set up the repo ({failure}{why})")
    log(
        f"Could not check out {redact_url(payload.url or '')} on this node ({failure}); "
        "using the working tree shipped from the client instead (it has no git history)"
    )
    try:
        unpack(payload.tree, target, replace=False)
    except (OSError, ValueError, tarfile.TarError) as error:
        _clear(target)
        raise RepoError(f"Failed to set up the repo (extract the working tree: {error})") from None
    return target
