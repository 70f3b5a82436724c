"""Bad input at the command line: one clear line (file, line, field, what to do), never a
traceback or a hang. No Ray needed: the configuration is checked before connecting."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "dstack_ray_cli.main"]

CASES = {
    "malformed-yaml": ("type: task\ncommands:\n  - echo [unclosed\n   bad: indent\n", "invalid YAML"),
    "wrong-type": ("type: task\nnodes: many\ncommands: [echo]\n", ":2: nodes: Input should be a valid integer"),
    "unknown-field": ("type: task\ncomands: [echo]\n", ":2: comands: unknown field `comands`"),
    "not-a-task": ("type: service\ncommands: [echo]\n", "only tasks are supported"),
    "empty": ("", "the configuration is empty"),
    "list": ("- a\n- b\n", "must be a mapping"),
    "bad-env": ("type: task\nenv:\n  - 1BAD=x\ncommands: [echo]\n", "Invalid environment variable `1BAD=x`"),
    "bad-cron": ("type: task\nschedule:\n  cron: '61 * * * *'\ncommands: [echo]\n", "the last value (61) is higher than the maximum value (59)"),
    "bool-command": ("type: task\ncommands:\n  - true\n", "put it in quotes"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_errors_are_one_clear_message(tmp_path, name):
    text, expected = CASES[name]
    path = tmp_path / f"{name}.dstack.yml"
    path.write_text(text)
    for command in (["config", "validate", "-f", str(path)], ["apply", "-f", str(path), "-y", "--address", "127.0.0.1:1"]):
        result = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert str(path) in result.stderr


def test_huge_binary_and_misnamed_files(tmp_path):
    huge = tmp_path / "huge.dstack.yml"
    huge.write_text("type: task\ncommands: [echo]\n# " + "x" * (2 << 20) + "\n")
    binary = tmp_path / "binary.dstack.yml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    misnamed = tmp_path / "task.yml"
    misnamed.write_text("type: task\ncommands: [echo]\n")
    expectations = {huge: "the limit is", binary: "not UTF-8", misnamed: "must end with `.dstack.yml`", tmp_path: "is a directory"}
    for path, expected in expectations.items():
        result = subprocess.run([*CLI, "config", "validate", "-f", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_bad_options(tmp_path):
    path = tmp_path / "ok.dstack.yml"
    path.write_text("type: task\ncommands: [echo]\n")
    for option, expected in (
        (["--gpu", "A100:H100"], "GPU spec name conflict"),
        (["--max-duration", "1h30m"], "Cannot parse the duration 1h30m"),
        (["-e", "1X=2"], "Invalid environment variable"),
        (["-p", "8080:"], "Invalid port mapping"),
    ):
        result = subprocess.run([*CLI, "apply", "-f", str(path), "-y", "--address", "127.0.0.1:1", *option], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and expected in result.stderr, (option, result.stderr)
        assert "Traceback" not in result.stderr
