"""`repos`: the payload built from a local or URL repo, and its checkout on a node, against real
git repos with file:// remotes (no network)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

import dstack_ray.exec.repo as repo_module
from dstack_ray.config import ConfigurationError
from dstack_ray.config.repos import RepoSpec
from dstack_ray.exec.archive import ArchiveTooLarge
from dstack_ray.exec.repo import RepoError, RepoPayload, materialize_repo, prepare_repo, repo_id_for

BINARY_V1 = bytes(range(256)) * 4
BINARY_V2 = bytes(reversed(range(256))) * 4 + b"\x00tail"


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def write(path: Path, content: "str | bytes") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host git config leaks in; commits get a fixed identity."""
    config = write(
        tmp_path / "gitconfig",
        "[user]\n\tname = Global User\n\temail = global@example.com\n"
        "[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n\tallow = always\n",
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", raising=False)


class Logs:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def __str__(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repo with `main` (two commits) and `feature`, cloned into tmp_path/project."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q")
    write(seed / "README.md", "readme v1\n")
    write(seed / "model.bin", BINARY_V1)
    write(seed / "gone.txt", "to be deleted\n")
    write(seed / ".gitignore", "*.log\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "first")
    write(seed / "README.md", "readme v2\n")
    git(seed, "commit", "-q", "-am", "second")
    git(seed, "checkout", "-q", "-b", "feature")
    write(seed / "feature.txt", "feature\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "feature")
    git(seed, "checkout", "-q", "main")
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(bare))
    shutil.rmtree(seed)
    return bare


@pytest.fixture
def project(tmp_path: Path, origin: Path) -> Path:
    project = tmp_path / "project"
    git(tmp_path, "clone", "-q", f"file://{origin}", str(project))
    git(project, "config", "user.name", "Local User")
    git(project, "config", "user.email", "local@example.com")
    return project


def local_spec(path: str = "project", **kwargs: object) -> RepoSpec:
    return RepoSpec.model_validate({"local_path": path, **kwargs})


def node_dir(tmp_path: Path) -> Path:
    working_dir = tmp_path / "node" / "wd"
    working_dir.mkdir(parents=True)
    return working_dir


# --- client side ---------------------------------------------------------------------


def test_local_changes_and_untracked_files_arrive(tmp_path: Path, project: Path) -> None:
    pushed = git(project, "rev-parse", "HEAD")
    write(project / "README.md", "readme local edit\n")
    write(project / "model.bin", BINARY_V2)
    (project / "gone.txt").unlink()
    write(project / "new" / "script.py", "print('untracked')\n")
    write(project / "new" / "blob.bin", b"\x00\x01\x02untracked binary\xff")
    os.chmod(write(project / "run.sh", "#!/bin/sh\necho hi\n"), 0o755)
    write(project / "debug.log", "ignored, must not arrive")

    payload = prepare_repo(local_spec(), tmp_path, single_branch=None)
    assert payload.kind == "local"
    assert payload.url == f"file://{tmp_path / 'origin.git'}"
    assert (payload.branch, payload.commit) == ("main", pushed)
    assert payload.single_branch is True
    assert (payload.user_name, payload.user_email) == ("Local User", "local@example.com")
    assert b"debug.log" not in payload.diff

    logs = Logs()
    repo = materialize_repo(payload, node_dir(tmp_path), logs)
    assert repo == tmp_path / "node" / "wd"
    assert (repo / "README.md").read_text() == "readme local edit\n"
    assert (repo / "model.bin").read_bytes() == BINARY_V2
    assert not (repo / "gone.txt").exists()
    assert (repo / "new" / "script.py").read_text() == "print('untracked')\n"
    assert (repo / "new" / "blob.bin").read_bytes() == b"\x00\x01\x02untracked binary\xff"
    assert os.access(repo / "run.sh", os.X_OK)
    assert not (repo / "debug.log").exists()
    assert git(repo, "rev-parse", "HEAD") == pushed
    assert git(repo, "config", "user.name") == "Local User"
    assert git(repo, "config", "user.email") == "local@example.com"
    assert not any(name.startswith(".dstack-clone") for name in os.listdir(repo))


def test_unpushed_commits_travel_in_the_diff(tmp_path: Path, project: Path) -> None:
    pushed = git(project, "rev-parse", "HEAD")
    write(project / "committed.txt", "committed, not pushed\n")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "local only")
    write(project / "README.md", "second local commit\n")
    git(project, "commit", "-q", "-am", "local only 2")

    payload = prepare_repo(local_spec(), tmp_path, single_branch=True)
    assert payload.commit == pushed != git(project, "rev-parse", "HEAD")
    repo = materialize_repo(payload, node_dir(tmp_path), Logs())
    assert git(repo, "rev-parse", "HEAD") == pushed
    assert (repo / "committed.txt").read_text() == "committed, not pushed\n"
    assert (repo / "README.md").read_text() == "second local commit\n"


def test_clean_repo_has_an_empty_diff(tmp_path: Path, project: Path) -> None:
    payload = prepare_repo(local_spec(str(project)), Path("/nonexistent"), single_branch=False)
    assert payload.diff == b""
    assert payload.single_branch is False
    repo = materialize_repo(payload, node_dir(tmp_path), Logs())
    assert (repo / "README.md").read_text() == "readme v2\n"
    # Not single-branch: the other branch came along.
    assert "origin/feature" in git(repo, "branch", "-r")


def test_tracking_branch_other_than_main(tmp_path: Path, project: Path) -> None:
    git(project, "checkout", "-q", "-b", "mine", "--track", "origin/feature")
    payload = prepare_repo(local_spec(), tmp_path, single_branch=True)
    assert payload.branch == "feature"
    assert payload.commit == git(project, "rev-parse", "origin/feature")
    repo = materialize_repo(payload, node_dir(tmp_path), Logs())
    assert (repo / "feature.txt").exists()
    assert git(repo, "branch", "-r").split() == ["origin/feature"]


def test_relative_and_home_local_paths(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert prepare_repo(local_spec("~/project"), Path("/elsewhere"), None).kind == "local"
    assert prepare_repo(local_spec("../project"), tmp_path / "configs", None).kind == "local"


def test_no_upstream_is_a_clear_error(tmp_path: Path, project: Path) -> None:
    git(project, "checkout", "-q", "-b", "unpublished")
    with pytest.raises(ConfigurationError) as caught:
        prepare_repo(local_spec(), tmp_path, None)
    issue = caught.value.issues[0]
    assert issue.message == "No remote branch is configured"
    assert issue.path == "repos[0]"
    assert "git push -u <remote> unpublished" in (issue.hint or "")


def test_detached_head_is_a_clear_error(tmp_path: Path, project: Path) -> None:
    git(project, "checkout", "-q", "--detach")
    with pytest.raises(ConfigurationError, match="Git repo in 'detached HEAD' state"):
        prepare_repo(local_spec(), tmp_path, None)


@pytest.mark.parametrize(
    "setup,message",
    [
        ("missing", "Invalid repo path: project -> "),
        ("file", "Path is not a directory"),
        ("plain_dir", "Git repo not found"),
        ("subdir", "is inside the repo at"),
        ("upstream_unknown", "is not known locally"),
    ],
)
def test_unusable_local_paths(tmp_path: Path, origin: Path, setup: str, message: str) -> None:
    project = tmp_path / "project"
    if setup == "file":
        write(project, "not a dir")
    elif setup == "plain_dir":
        project.mkdir()
    elif setup == "subdir":
        git(tmp_path, "clone", "-q", f"file://{origin}", "outer")
        (tmp_path / "outer" / "project").mkdir()
        project = tmp_path / "outer" / "project"
    elif setup == "upstream_unknown":
        git(tmp_path, "clone", "-q", f"file://{origin}", "project")
        git(project, "config", "branch.main.merge", "refs/heads/never-pushed")
    spec = local_spec(str(project.relative_to(tmp_path)))
    with pytest.raises(ConfigurationError, match=message):
        prepare_repo(spec, tmp_path, None)


def test_diff_over_the_limit(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "big.txt", "x" * 50_000)
    monkeypatch.setenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", "20000")
    with pytest.raises(ArchiveTooLarge) as caught:
        prepare_repo(local_spec(), tmp_path, None)
    assert caught.value.issues[0].path == "repos[0]"
    assert caught.value.issues[0].message.startswith("Archive size is ")
    assert "exceeds the limit of 19.5KiB. Use .gitignore/.dstackignore" in str(caught.value)


def test_tree_is_left_out_when_over_the_limit(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", "10000")  # a tar is >= 10240 bytes
    write(project / "small.txt", "small change\n")
    payload = prepare_repo(local_spec(), tmp_path, None)
    assert payload.diff and payload.tree is None


def test_url_repo_payload(tmp_path: Path) -> None:
    spec = RepoSpec.model_validate(
        {"url": "https://github.com/org/repo.git", "branch": "dev", "hash": "abc123", "path": "src"}
    )
    payload = prepare_repo(spec, tmp_path, None)
    assert payload == RepoPayload(
        kind="url",
        url="https://github.com/org/repo.git",
        branch="dev",
        commit="abc123",
        path="src",
        single_branch=True,
        repo_id="repo-" + hashlib.sha256(b"github.com/org/repo").hexdigest()[:8],
    )
    assert payload.diff == b"" and payload.tree is None


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "https://user:token@github.com/org/repo",
        "git@github.com:org/repo.git",
        "ssh://git@github.com/org/repo.git",
    ],
)
def test_repo_id_is_dstacks_slug_of_host_and_path(url: str) -> None:
    """DSTACK_REPO_ID: `<name>-<sha256("host/owner/name")[:8]>`, whatever the URL form."""
    assert repo_id_for(url) == "repo-" + hashlib.sha256(b"github.com/org/repo").hexdigest()[:8]


# --- node side -----------------------------------------------------------------------


def url_payload(origin: Path, **kwargs: object) -> RepoPayload:
    return RepoPayload.model_validate({"kind": "url", "url": f"file://{origin}", **kwargs})


def commit_of(origin: Path, rev: str) -> str:
    return git(origin, "rev-parse", rev)


def test_url_repo_at_a_branch(tmp_path: Path, origin: Path) -> None:
    repo = materialize_repo(
        url_payload(origin, branch="feature", path="code"), node_dir(tmp_path), Logs()
    )
    assert repo == tmp_path / "node" / "wd" / "code"
    assert (repo / "feature.txt").read_text() == "feature\n"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "feature"


def test_url_repo_at_a_hash(tmp_path: Path, origin: Path) -> None:
    first = commit_of(origin, "main~1")
    payload = url_payload(origin, branch="main", commit=first)
    repo = materialize_repo(payload, node_dir(tmp_path), Logs())
    assert git(repo, "rev-parse", "HEAD") == first
    assert (repo / "README.md").read_text() == "readme v1\n"


def test_url_repo_at_a_hash_on_another_branch(tmp_path: Path, origin: Path) -> None:
    feature = commit_of(origin, "feature")
    payload = url_payload(origin, commit=feature, single_branch=True)
    repo = materialize_repo(payload, node_dir(tmp_path), Logs())
    assert git(repo, "rev-parse", "HEAD") == feature
    assert (repo / "feature.txt").exists()


def test_home_path(tmp_path: Path, origin: Path) -> None:
    home = tmp_path / "home"
    repo = materialize_repo(
        url_payload(origin, path="~/src/repo"), node_dir(tmp_path), Logs(), home=home
    )
    assert repo == home / "src" / "repo" and (repo / "README.md").exists()
    with pytest.raises(RepoError, match=r"^Failed to set up the repo \(.*~username"):
        materialize_repo(url_payload(origin, path="~bob/x"), node_dir(tmp_path / "b"), Logs())


@pytest.mark.parametrize("if_exists", ["error", "skip"])
def test_non_empty_target(tmp_path: Path, origin: Path, if_exists: str) -> None:
    working_dir = node_dir(tmp_path)
    write(working_dir / "repo" / "mine.txt", "already here")
    payload = url_payload(origin, path="repo", if_exists=if_exists)
    logs = Logs()
    if if_exists == "error":
        expected = r"^Failed to set up the repo \(.*exists and is not empty"
        with pytest.raises(RepoError, match=expected):
            materialize_repo(payload, working_dir, logs)
    else:
        assert materialize_repo(payload, working_dir, logs) == working_dir / "repo"
        assert "Skipping repo checkout" in str(logs)
    assert os.listdir(working_dir / "repo") == ["mine.txt"]


def test_lone_lost_and_found_counts_as_empty(tmp_path: Path, origin: Path) -> None:
    working_dir = node_dir(tmp_path)
    (working_dir / "lost+found").mkdir()
    repo = materialize_repo(url_payload(origin), working_dir, Logs())
    assert (repo / "README.md").exists() and (repo / "lost+found").is_dir()


def test_clone_failure_falls_back_to_the_shipped_tree(tmp_path: Path, project: Path) -> None:
    write(project / "README.md", "local edit\n")
    write(project / "untracked.txt", "untracked\n")
    write(project / "debug.log", "ignored")
    write(project / ".dstackignore", "secrets/\n")
    write(project / "secrets" / "key", "do not ship")
    os.symlink("README.md", project / "readme-link")
    os.symlink("/opt/only-in-the-container", project / "data")  # dangling here, and outside
    git(project, "add", "data")
    payload = prepare_repo(local_spec(), tmp_path, None)
    assert payload.tree is not None
    shutil.move(tmp_path / "origin.git", tmp_path / "moved.git")  # the remote is unreachable

    logs = Logs()
    working_dir = node_dir(tmp_path)
    repo = materialize_repo(payload, working_dir, logs)
    assert "using the working tree shipped from the client" in str(logs)
    assert sorted(os.listdir(repo)) == [
        ".dstackignore",
        ".gitignore",
        "README.md",
        "gone.txt",
        "model.bin",
        "readme-link",
        "untracked.txt",
    ]
    assert (repo / "README.md").read_text() == "local edit\n"
    assert (repo / "model.bin").read_bytes() == BINARY_V1
    assert os.readlink(repo / "readme-link") == "README.md"
    assert not os.path.lexists(repo / "data")  # a tree cannot carry links that leave it


def test_clone_failure_without_tree(tmp_path: Path, project: Path) -> None:
    payload = prepare_repo(local_spec(), tmp_path, None).model_copy(update={"tree": None})
    shutil.move(tmp_path / "origin.git", tmp_path / "moved.git")
    working_dir = node_dir(tmp_path)
    with pytest.raises(RepoError) as caught:
        materialize_repo(payload, working_dir, Logs())
    assert str(caught.value).startswith("Failed to set up the repo (`git clone")
    assert os.listdir(working_dir) == []  # nothing half-cloned is left behind


def test_credentials_in_urls_stay_out_of_logs_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for proxy in ["http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"]:
        monkeypatch.delenv(proxy, raising=False)
    # Nothing listens on the discard port of the loopback: the clone fails at once.
    payload = RepoPayload(kind="url", url="https://user:s3cret@127.0.0.1:9/repo.git")
    logs = Logs()
    with pytest.raises(RepoError) as caught:
        materialize_repo(payload, node_dir(tmp_path), logs)
    assert "s3cret" not in str(caught.value) and "s3cret" not in str(logs)
    assert "user:***@127.0.0.1" in str(logs)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hanging_remote_times_out_with_its_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git's "ssh" is a shell that records its pid and sleeps, holding git's pipes open.
    pid_file = tmp_path / "helper.pid"
    monkeypatch.setenv("GIT_SSH_COMMAND", f"sh -c 'echo $$ > {pid_file}; exec sleep 30' --")
    monkeypatch.setenv("GIT_SSH_VARIANT", "ssh")
    monkeypatch.setattr(repo_module, "REMOTE_GIT_TIMEOUT_S", 1)
    started = time.monotonic()
    with pytest.raises(RepoError, match=r"`git clone` failed: timed out after 1s"):
        materialize_repo(
            RepoPayload(kind="url", url="ssh://git@example.invalid/repo.git"),
            node_dir(tmp_path),
            Logs(),
        )
    assert time.monotonic() - started < 10
    helper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(helper), "the helper git started outlived the timeout"


def test_unknown_commit_is_a_repo_error(tmp_path: Path, origin: Path) -> None:
    payload = url_payload(origin, commit="0" * 40)
    with pytest.raises(RepoError, match=r"^Failed to set up the repo \("):
        materialize_repo(payload, node_dir(tmp_path), Logs())


def test_a_diff_that_does_not_apply_is_a_repo_error(tmp_path: Path, origin: Path) -> None:
    diff = b"--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-not the content\n+x\n"
    with pytest.raises(RepoError, match=r"^Failed to set up the repo \(`git apply"):
        materialize_repo(url_payload(origin, diff=diff), node_dir(tmp_path), Logs())


def test_payload_json_round_trip(tmp_path: Path, project: Path) -> None:
    write(project / "blob.bin", b"\xff\x00binary")
    payload = prepare_repo(local_spec(), tmp_path, None)
    assert RepoPayload.model_validate_json(payload.model_dump_json()) == payload
