"""Reading `.dstack.yml` files: YAML errors, line numbers in messages, file rules, hints."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from dstack_ray.config import ConfigIssue, ConfigurationError, load_configuration, parse_configuration, read_yaml


@pytest.fixture(autouse=True)
def _no_profiles(tmp_path, monkeypatch):
    """Keep the developer's own ~/.dstack/profiles.yml and environment out of these tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DSTACK_PROFILE", raising=False)
    monkeypatch.delenv("DSTACK_NO_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "task.dstack.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path: Path) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        load_configuration(path)
    return info.value


class TestReadYaml:
    def test_positions(self):
        text = textwrap.dedent(
            """\
            type: task
            env:
              - A=1
              - B
            resources:
              gpu:
                name: A100
            groups:
              - name: a
                commands: [x, y]
            """
        )
        data, positions = read_yaml(text)
        assert data["resources"]["gpu"]["name"] == "A100"
        assert positions == {
            ("type",): 1,
            ("env",): 2,
            ("env", 0): 3,
            ("env", 1): 4,
            ("resources",): 5,
            ("resources", "gpu"): 6,
            ("resources", "gpu", "name"): 7,
            ("groups",): 8,
            ("groups", 0): 9,
            ("groups", 0, "name"): 9,
            ("groups", 0, "commands"): 10,
            ("groups", 0, "commands", 0): 10,
            ("groups", 0, "commands", 1): 10,
        }

    @pytest.mark.parametrize("text", ["", "# comment only\n", "---\n"])
    def test_empty(self, text):
        assert read_yaml(text) == (None, {})

    def test_duplicate_key_keeps_the_last(self):
        data, positions = read_yaml("commands: [x]\ncommands: [y]\n")
        assert data == {"commands": ["y"]}
        assert positions[("commands",)] == 2

    def test_anchors_and_aliases(self):
        data, positions = read_yaml("base: &b {cpu: 4}\nresources: *b\n")
        assert data["resources"] == {"cpu": 4}
        assert positions[("resources",)] == 2

    def test_merge_key(self):
        data, _ = read_yaml("base: &b {cpu: 4}\nresources:\n  <<: *b\n  memory: 8GB\n")
        assert data["resources"] == {"cpu": 4, "memory": "8GB"}

    def test_recursive_alias_does_not_hang(self):
        data, positions = read_yaml("a: &x [*x]\n")
        assert data["a"][0] is data["a"]
        assert positions[("a",)] == 1

    @pytest.mark.parametrize(
        ("text", "line", "problem"),
        [
            ("type: task\ncommands: [\n", 3, "expected the node content, but found '<stream end>'"),
            ("type: task\n\tcommands: [x]\n", 2, "found character '\\t' that cannot start any token"),
            ("type: task\ncommands: [x]\n---\ntype: task\n", 3, "but found another document"),
            ("type: task\n  commands: [x]\n", 2, "mapping values are not allowed here"),
            ("a: 'unclosed\n", 2, "found unexpected end of stream"),
            (
                "a: !!python/object:os.system x\n",
                1,
                "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'",
            ),
            ("? [a, b]\n: c\n", 1, "found unhashable key"),
        ],
    )
    def test_syntax_errors(self, text, line, problem):
        with pytest.raises(ConfigurationError) as info:
            read_yaml(text, file="x.dstack.yml")
        (issue,) = info.value.issues
        assert issue.line == line
        assert issue.message == f"invalid YAML: {problem}"
        assert issue.hint == "check the indentation and quoting around this line"
        assert str(info.value).startswith(f"x.dstack.yml:{line}: invalid YAML: ")

    def test_billion_laughs_is_rejected_quickly(self):
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
        text = "type: task\ncommands: [x]\nretry: *a8\n".replace("retry: *a8", "\n".join(lines) + "\nretry: *a8")
        start = time.monotonic()
        with pytest.raises(ConfigurationError) as info:
            read_yaml(text, file="l.dstack.yml")
        assert time.monotonic() - start < 2
        (issue,) = info.value.issues
        assert issue.message == "invalid YAML: aliases expand the document to more than 1000000 values"

    def test_moderate_aliases_are_fine(self):
        text = "x-gpu: &gpu {name: H100, count: 8}\ny: [*gpu, *gpu, *gpu]\n"
        data, _ = read_yaml(text)
        assert data["y"] == [{"name": "H100", "count": 8}] * 3

    def test_too_deeply_nested(self):
        with pytest.raises(ConfigurationError, match="nested too deeply"):
            read_yaml("[" * 5000)


YAML = """\
type: task
name: train
commands:
  - echo hi
env:
  - A=1
  - B
resources:
  cpu: arm:x86
  gpu:
    name: A100
    vendor: foo
ports:
  - 8080
  - "8080:"
max_duration: 1.5h
retry:
  on_events: [error, oops]
"""


class TestLineNumbers:
    def test_every_issue_has_file_line_and_path(self, tmp_path):
        path = write(tmp_path, YAML)
        error = load_error(path)
        assert [(i.line, i.path) for i in error.issues] == [
            (9, "resources.cpu"),
            (12, "resources.gpu.vendor"),
            (15, "ports[1]"),
            (16, "max_duration"),
            (18, "retry.on_events[1]"),
        ]
        lines = str(error).splitlines()
        assert lines[0] == f"{path}:9: resources.cpu: CPU spec arch conflict: arm:x86"
        assert lines[1].startswith(f"{path}:12: resources.gpu.vendor: Unknown GPU vendor `foo`")
        assert lines[2].startswith(f"{path}:15: ports[1]: Invalid port mapping `8080:`")
        assert lines[3].startswith(f"{path}:16: max_duration: Cannot parse the duration 1.5h")
        assert lines[4].startswith(f"{path}:18: retry.on_events[1]: Input should be")

    @pytest.mark.parametrize(
        ("text", "line", "path", "message"),
        [
            ("type: task\ncommands: [x]\nnodes: 0\n", 3, "nodes", "Input should be greater than or equal to 1"),
            ("type: task\ncommands: [x]\nresources:\n  gpu: A100:2:3\n", 4, "resources.gpu", "GPU spec count conflict: A100:2:3"),
            ("type: task\ncommands: [x]\nresources:\n  memory: 16GB..8GB\n", 4, "resources.memory", "Invalid range order: 16GB..8GB"),
            ("type: task\ncommands:\n  - a\n  - null\n", 4, "commands[1]", "Input should be a valid string"),
            ("type: task\ncommands: [x]\nenv:\n  A: 1\n  B: null\n", 5, "env.B", "invalid value None"),
            ("type: task\ncommands: [x]\nfiles:\n  - a:b:c\n", 4, "files[0]", "invalid file path mapping: a:b:c"),
            ("type: task\ncommands: [x]\nvolumes:\n  - name: v\n    path: rel\n", 5, "volumes[0].path", "path must be absolute: rel"),
            ("type: task\ncommands: [x]\nschedule:\n  cron: 0 0 * * 7\n", 4, "schedule.cron", "Invalid cron expression `0 0 * * 7`"),
            ("type: task\nimage: u\npython: '3.10'\n", 3, "python", "`image` and `python` are mutually exclusive fields"),
            ("type: task\nimage: u\ndocker: true\n", 3, "docker", "`image` and `docker` are mutually exclusive fields"),
            ("type: task\ncommands: []\n", 2, "commands", "Either `commands` or `image` must be set"),
            (
                "type: task\nimage: u\ngroups:\n  - name: a\n  - name: a\n",
                3,
                "groups",
                "Duplicate node group names found: ['a']",
            ),
            (
                "type: task\nimage: u\ngroups:\n  - commands: [x]\ncommands: [y]\n",
                5,
                "commands",
                "Top-level `commands` is not allowed when `groups` is set",
            ),
            (
                "type: task\nimage: u\nnodes: 2\ngroups:\n  - commands: [x]\n",
                3,
                "nodes",
                "`nodes` and `groups` are mutually exclusive",
            ),
            ("type: task\ncommands: [x]\ngroups:\n  - name: Bad\n", 4, "groups[0].name", "Node group name should match regex"),
            ("type: task\ncommands: [x]\nutilization_policy:\n  min_gpu_utilization: 5\n  time_window: 1m\n", 5, "utilization_policy.time_window", "Minimum time_window is 5m"),
        ],
    )
    def test_issue_line(self, tmp_path, text, line, path, message):
        file = write(tmp_path, text)
        error = load_error(file)
        issue = next(i for i in error.issues if i.path == path)
        assert issue.line == line
        assert message in issue.message
        assert f"{file}:{line}: {path}: " in str(error)

    def test_missing_commands_has_no_line(self, tmp_path):
        file = write(tmp_path, "type: task\nname: x\n")
        error = load_error(file)
        (issue,) = error.issues
        assert (issue.line, issue.path, issue.message) == (None, "commands", "Either `commands` or `image` must be set")
        assert str(error).startswith(f"{file}: commands: Either `commands` or `image` must be set\n  hint: ")

    def test_missing_field_points_at_its_parent(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands: [x]\nregistry_auth:\n  username: u\n")
        error = load_error(file)
        (issue,) = error.issues
        assert (issue.line, issue.path, issue.message) == (3, "registry_auth.password", "Field required")

    def test_type_errors_have_the_type_line(self, tmp_path):
        file = write(tmp_path, "# a service\n\ntype: service\nport: 80\n")
        error = load_error(file)
        assert str(error) == f"{file}:3: type: only tasks are supported: dstack-ray runs `type: task`, not `type: service`"

    def test_type_missing(self, tmp_path):
        file = write(tmp_path, "commands: [x]\n")
        (issue,) = load_error(file).issues
        assert (issue.path, issue.message, issue.line) == ("type", "`type` is required", None)
        assert str(load_error(file)) == f"{file}: type: `type` is required\n  hint: add `type: task`"

    def test_parse_configuration_with_positions(self):
        data, positions = read_yaml("type: task\ncommands: [x]\n\nnodes: -1\n", "p.dstack.yml")
        with pytest.raises(ConfigurationError) as info:
            parse_configuration(data, positions=positions, file="p.dstack.yml")
        assert str(info.value) == "p.dstack.yml:4: nodes: Input should be greater than or equal to 1"

    def test_parse_configuration_without_positions(self):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration({"type": "task", "commands": ["x"], "nodes": -1})
        assert str(info.value) == "nodes: Input should be greater than or equal to 1"

    def test_source_is_remembered(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands:\n  - a\n  - b\n")
        cfg = load_configuration(file)
        assert cfg.source_file == str(file)
        assert cfg.source_line(("commands", 1)) == 4
        assert cfg.source_line(("commands", 7)) == 2  # the nearest parent present
        assert cfg.source_line(("nothing",)) is None


class TestUnknownFieldHints:
    @pytest.mark.parametrize(
        ("text", "line", "path", "hint"),
        [
            ("type: task\ncomands: [x]\n", 2, "comands", "did you mean `commands`?"),
            ("type: task\ncommands: [x]\nenvs: {}\n", 3, "envs", "did you mean `env`?"),
            ("type: task\ncommands: [x]\nresources:\n  gpus: 1\n", 4, "resources.gpus", "did you mean `gpu`?"),
            ("type: task\ncommands: [x]\nresources:\n  gpu:\n    nmae: A100\n", 5, "resources.gpu.nmae", "did you mean `name`?"),
            ("type: task\ncommands: [x]\ngpu: A100\n", 3, "gpu", "`gpu` belongs under `resources:`; indent it below that key"),
            ("type: task\ncommands: [x]\ndisk: 100GB\n", 3, "disk", "`disk` belongs under `resources:`; indent it below that key"),
            ("type: task\ncommands: [x]\nqwertyuiop: 1\n", 3, "qwertyuiop", "remove it; see `dstack-ray config schema` for the fields dstack defines"),
        ],
    )
    def test_hint(self, tmp_path, text, line, path, hint):
        file = write(tmp_path, text)
        (issue,) = load_error(file).issues
        assert (issue.line, issue.path, issue.message, issue.hint) == (line, path, f"unknown field `{path.split('.')[-1]}`", hint)
        assert f"\n  hint: {hint}" in str(load_error(file))


class TestFiles:
    @pytest.mark.parametrize("name", [".dstack.yml", "task.dstack.yml", "a.b.dstack.yml", ".dstack.yaml", "train.dstack.yaml"])
    def test_accepted_names(self, tmp_path, name):
        file = write(tmp_path, "type: task\ncommands: [x]\n", name)
        assert load_configuration(file).commands == ["x"]

    def test_path_as_string(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands: [x]\n")
        assert load_configuration(str(file)).commands == ["x"]

    @pytest.mark.parametrize("name", ["task.yml", "task.yaml", "dstack.yml", "task.dstack.yml.bak", "task.DSTACK.YML", "task.dstack"])
    def test_rejected_names(self, tmp_path, name):
        file = write(tmp_path, "type: task\ncommands: [x]\n", name)
        error = load_error(file)
        assert error.issues[0].message == f"the configuration file name must end with `.dstack.yml` or `.dstack.yaml`: {file}"
        assert "rename it" in error.issues[0].hint

    def test_name_is_checked_before_reading(self, tmp_path):
        error = load_error(tmp_path / "missing.yml")
        assert "must end with `.dstack.yml`" in str(error)

    def test_missing_file(self, tmp_path):
        error = load_error(tmp_path / "missing.dstack.yml")
        assert str(error) == f"configuration file {tmp_path / 'missing.dstack.yml'} does not exist"

    def test_directory(self, tmp_path):
        (tmp_path / "dir.dstack.yml").mkdir()
        assert "is a directory" in str(load_error(tmp_path / "dir.dstack.yml"))

    def test_not_utf8(self, tmp_path):
        file = tmp_path / "bin.dstack.yml"
        file.write_bytes(b"type: task\ncommands: ['\xff\xfe']\n")
        assert "is not UTF-8 text" in str(load_error(file))

    def test_too_large(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands: [x]\n" + "# padding\n" * 120_000)
        assert "the limit is" in str(load_error(file))

    @pytest.mark.parametrize("text", ["", "# nothing here\n", "---\n"])
    def test_empty_file(self, tmp_path, text):
        file = write(tmp_path, text)
        error = load_error(file)
        (issue,) = error.issues
        assert issue.message == "the configuration is empty"
        assert str(error).startswith(f"{file}: the configuration is empty")

    @pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
    def test_not_a_mapping(self, tmp_path, text, kind):
        file = write(tmp_path, text)
        assert str(load_error(file)) == f"{file}:1: the configuration must be a mapping of fields, not {kind}"

    def test_yaml_error_names_file_and_line(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands:\n  - 'echo hi\n")
        error = load_error(file)
        assert str(error).startswith(f"{file}:4: invalid YAML: ")

    def test_large_values_are_shortened_in_messages(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands: [x]\nretry: [" + ", ".join(["[a, b, c]"] * 500) + "]\n")
        (issue,) = load_error(file).issues
        assert issue.path == "retry"
        assert issue.message.startswith("invalid value [['a', 'b', 'c'], ")
        assert "..." in issue.message
        assert len(issue.message) < 300

    def test_yaml_dot_inf_duration(self, tmp_path):
        file = write(tmp_path, "type: task\ncommands: [x]\nmax_duration: .inf\n")
        assert f"{file}:3: max_duration: Cannot parse the duration inf" in str(load_error(file))


class TestIssueRendering:
    def test_format(self):
        issue = ConfigIssue("bad", path="a.b", line=3, hint="fix it")
        assert issue.format("f.dstack.yml") == "f.dstack.yml:3: a.b: bad\n  hint: fix it"
        assert issue.format() == "line 3: a.b: bad\n  hint: fix it"
        assert ConfigIssue("bad").format() == "bad"
        assert ConfigIssue("bad", path="x").format("f") == "f: x: bad"

    def test_error_is_a_value_error(self):
        error = ConfigurationError("boom", path="p", line=2, file="f")
        assert isinstance(error, ValueError)
        assert str(error) == "f:2: p: boom"
        assert error.issues == [ConfigIssue("boom", path="p", line=2)]

    def test_with_file(self):
        error = ConfigurationError([ConfigIssue("a", line=1), ConfigIssue("b", path="x")])
        assert str(error.with_file("f")) == "f:1: a\nf: x: b"
        assert error.with_file("f").with_file("g").file == "f"


class TestUnionMessages:
    """A value that fits no alternative of a union is explained by the closest alternative."""

    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"volumes": [{"instance_path": "h", "path": "/p"}]}, [("volumes[0].instance_path", "path must be absolute: h")]),
            ({"volumes": [{"name": "v"}]}, [("volumes[0].path", "Field required")]),
            ({"volumes": [{"name": "v", "path": "/p", "x": 1}]}, [("volumes[0].x", "unknown field `x`")]),
            ({"volumes": [5]}, [("volumes[0]", "invalid value 5; expected a mapping")]),
            ({"instances": [{"fleet": "f"}]}, [("instances[0].instance", "Field required")]),
            ({"instances": [{"fleet": "f", "instance": -1}]}, [("instances[0].instance", "Input should be greater than or equal to 0")]),
            ({"instances": [{"hostname": ""}]}, [("instances[0].hostname", "String should have at least 1 character")]),
            ({"retry": {"on_events": []}}, [("retry", "`on_events` cannot be empty")]),
            ({"retry": {"duration": "1x"}}, [("retry.duration", "Cannot parse the duration 1x: use seconds or a number with one unit of s, m, h, d, w (e.g. 90, 30m, 2h)")]),
            ({"retry": "always"}, [("retry", "invalid value 'always'; expected a mapping or true or false")]),
            ({"env": {"A": True}}, [("env.A", "invalid value True; expected a mapping or a string")]),
            ({"schedule": {"cron": [1, None]}}, [("schedule.cron[1]", "Input should be a valid string")]),
        ],
    )
    def test_closest_alternative(self, fields, expected):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration({"type": "task", "commands": ["x"], **fields})
        assert [(i.path, i.message) for i in info.value.issues] == expected

    def test_fields_that_rule_each_other_out(self):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration({"type": "task", "commands": ["x"], "instances": [{"name": "a", "hostname": "b"}]})
        assert [(i.path, i.hint) for i in info.value.issues] == [
            ("instances[0].hostname", "`hostname` cannot be combined with the other fields of this mapping"),
            ("instances[0].name", "`name` cannot be combined with the other fields of this mapping"),
        ]
