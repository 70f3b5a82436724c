"""`files` and `repos` through Ray: packed on the client, unpacked by every node."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from dstack_ray.config import ConfigurationError
from dstack_ray.exec.repo import repo_id_for
from dstack_ray.models import JobTerminationReason, RunStatus


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write_config(directory, name, body):
    path = directory / f"{name}.dstack.yml"
    path.write_text(textwrap.dedent(body))
    return path


def test_files_arrive_on_every_node_with_ignore_rules(client, tmp_path):
    """Two ranks share this host (simulated nodes): each unpacks into its own run directories,
    so neither removes what the other wrote (this raced when targets were absolute)."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "model.py").write_text("print('model')\n")
    (src / "big.ckpt").write_text("weights\n")
    (src / ".dstackignore").write_text("*.ckpt\n")
    (tmp_path / "notes.txt").write_text("notes\n")
    config = write_config(
        tmp_path,
        "files",
        """
        type: task
        name: files
        nodes: 2
        files:
          - src
          - notes.txt:~/shared/notes.txt
        commands:
          - find src -type f | sort
          - cat ~/shared/notes.txt
        resources:
          cpu: 1
          memory: 256MB
        """,
    )
    run = client.apply(config)
    assert run.wait(60) == RunStatus.DONE
    for rank in (0, 1):
        assert list(run.logs(rank=rank)) == ["src/.dstackignore", "src/pkg/model.py", "notes"]


def test_files_over_the_limit_are_refused_with_dstacks_text(client, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "blob.bin").write_bytes(b"x" * 4096)
    config = write_config(tmp_path, "toobig", "type: task\nfiles:\n  - data\ncommands:\n  - echo ok\n")
    monkeypatch.setenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", "1024")
    with pytest.raises(ConfigurationError, match="exceeds the limit of 1.0KiB. Use .gitignore/.dstackignore"):
        client.apply(config)


def test_missing_files_path(client, tmp_path):
    config = write_config(tmp_path, "nofile", "type: task\nfiles:\n  - nowhere\ncommands:\n  - echo ok\n")
    with pytest.raises(ConfigurationError, match="specified in `files` does not exist"):
        client.apply(config)


@pytest.fixture
def repo_pair(tmp_path):
    """A bare origin (file://) and a clone with local changes, pushed once."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--bare", "-b", "main", str(origin))
    work = tmp_path / "work"
    git(tmp_path, "clone", str(origin), str(work))
    git(work, "config", "user.email", "t@example.com")
    git(work, "config", "user.name", "T")
    (work / "tracked.txt").write_text("committed\n")
    (work / ".gitignore").write_text("*.tmp\n")
    git(work, "add", ".")
    git(work, "commit", "-m", "first")
    git(work, "push", "origin", "main")
    return origin, work


def test_local_repo_arrives_with_diff_and_untracked_files(client, repo_pair):
    origin, work = repo_pair
    (work / "tracked.txt").write_text("modified locally\n")
    (work / "new.txt").write_text("untracked\n")
    (work / "junk.tmp").write_text("ignored\n")
    config = write_config(
        work,
        "repo",
        """
        type: task
        name: local-repo
        repos:
          - .
        commands:
          - cat tracked.txt new.txt
          - test ! -e junk.tmp && echo no-junk
          - git log --format=%s -1
          - echo repo=$DSTACK_REPO_DIR
          - echo id=$DSTACK_REPO_ID
          - test "$DSTACK_REPO_DIR" = "$DSTACK_WORKING_DIR" && test "$PWD" = "$DSTACK_WORKING_DIR" && echo same
        resources:
          cpu: 1
          memory: 256MB
        """,
    )
    run = client.apply(config)
    assert run.wait(60) == RunStatus.DONE, run.events()
    lines = list(run.logs())
    assert lines[:4] == ["modified locally", "untracked", "no-junk", "first"]
    assert lines[4].startswith("repo=/")
    assert lines[5] == f"id={repo_id_for(str(origin))}" and lines[5].startswith("id=origin-")
    assert lines[6] == "same"


def test_url_repo_is_cloned_at_the_commit(client, repo_pair, tmp_path):
    origin, work = repo_pair
    first = git(work, "rev-parse", "HEAD")
    (work / "tracked.txt").write_text("second commit\n")
    git(work, "commit", "-am", "second")
    git(work, "push", "origin", "main")
    run = client.apply(
        {
            "type": "task",
            "name": "url-repo",
            "repos": [{"url": f"file://{origin}", "hash": first, "path": "checkout"}],
            "commands": ["cat checkout/tracked.txt", "cd checkout && git rev-parse HEAD"],
            "resources": {"cpu": 1, "memory": "256MB"},
        }
    )
    assert run.wait(60) == RunStatus.DONE, run.events()
    assert list(run.logs()) == ["committed", first]


def test_unreachable_repo_fails_the_setup(client, tmp_path):
    run = client.apply(
        {
            "type": "task",
            "name": "bad-repo",
            "repos": [{"url": f"file://{tmp_path}/nothing.git"}],
            "commands": ["true"],
            "resources": {"cpu": 1, "memory": "256MB"},
        }
    )
    assert run.wait(60) == RunStatus.FAILED
    job = run.jobs[0]
    assert job.termination_reason == JobTerminationReason.CONTAINER_EXITED_WITH_ERROR
    assert job.termination_message.startswith("Failed to set up the repo (")
