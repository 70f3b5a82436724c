"""`type: task`: every field of dstack's BaseRunConfiguration and TaskConfiguration, the cross-field
rules, node groups, and the checks dstack's server makes when a run is submitted.

Cases follow dstack's src/tests/_internal/core/models/test_configurations.py (TestNodeGroups,
TestRepoSpec, shell), test_files.py, and server/services/runs/test_spec.py, adapted to our API.
"""

from __future__ import annotations

import logging

import pytest

from dstack_ray.config import (
    ConfigurationError,
    NodeGroup,
    PortMapping,
    ResourcesSpec,
    TaskConfiguration,
    load_configuration,
    parse_configuration,
)
from dstack_ray.config.checks import check_host_paths, check_submittable, inferred_gpu_vendor, with_server_defaults
from dstack_ray.config.files import FilePathMapping
from dstack_ray.config.gpus import AcceleratorVendor
from dstack_ray.config.ports import filter_reserved_ports
from dstack_ray.config.repos import RepoExistsAction, RepoSpec
from dstack_ray.config.task import PythonVersion, RegistryAuth
from dstack_ray.config.volumes import InstanceMountPoint, VolumeMountPoint


def task(**fields) -> dict:
    data = {"type": "task", "commands": ["true"]}
    data.update(fields)
    return data


def parse(**fields) -> TaskConfiguration:
    return parse_configuration(task(**fields))


def issues_of(data: dict) -> list:
    with pytest.raises(ConfigurationError) as info:
        parse_configuration(data)
    return info.value.issues


def only_issue(data: dict):
    issues = issues_of(data)
    assert len(issues) == 1, issues
    return issues[0]


# ---- type and the minimal task -------------------------------------------------------------


class TestType:
    def test_minimal_task(self):
        cfg = parse_configuration({"type": "task", "commands": ["echo hi"]})
        assert isinstance(cfg, TaskConfiguration)
        assert cfg.type == "task"
        assert cfg.commands == ["echo hi"]

    @pytest.mark.parametrize("data", [{"commands": ["x"]}, {"type": None, "commands": ["x"]}])
    def test_type_is_required(self, data):
        issue = only_issue(data)
        assert (issue.path, issue.message, issue.hint) == ("type", "`type` is required", "add `type: task`")

    @pytest.mark.parametrize("kind", ["service", "dev-environment", "fleet", "gateway", "volume"])
    def test_other_dstack_types(self, kind):
        issue = only_issue({"type": kind, "commands": ["x"]})
        assert issue.path == "type"
        assert issue.message == f"only tasks are supported: dstack-ray runs `type: task`, not `type: {kind}`"

    @pytest.mark.parametrize("kind", ["bogus", "Task", "TASK", 1, True])
    def test_unknown_types(self, kind):
        issue = only_issue({"type": kind, "commands": ["x"]})
        assert issue.path == "type"
        assert issue.message == f"unknown configuration type `{kind}`; dstack-ray runs `type: task`"

    @pytest.mark.parametrize("data", [[], ["type: task"], "type: task", 5])
    def test_not_a_mapping(self, data):
        issue = only_issue(data)
        assert "the configuration must be a mapping of fields" in issue.message

    def test_empty(self):
        issue = only_issue(None)
        assert issue.message == "the configuration is empty"


class TestCommandsOrImage:
    @pytest.mark.parametrize(
        "data",
        [
            {"type": "task"},
            {"type": "task", "commands": []},
            {"type": "task", "image": ""},
            {"type": "task", "python": "3.12"},
            {"type": "task", "docker": True},
            {"type": "task", "nvcc": True},
            {"type": "task", "entrypoint": "python"},
        ],
    )
    def test_required(self, data):
        issue = only_issue(data)
        assert issue.message == "Either `commands` or `image` must be set"
        assert issue.hint

    @pytest.mark.parametrize(
        "data",
        [
            {"type": "task", "image": "ubuntu"},
            {"type": "task", "commands": ["x"]},
            {"type": "task", "image": "ubuntu", "commands": ["x"]},
            {"type": "task", "image": "ubuntu", "entrypoint": "python"},
        ],
    )
    def test_satisfied(self, data):
        parse_configuration(data)

    @pytest.mark.parametrize(
        ("commands", "message"),
        [("echo hi", "Input should be a valid list"), ([None], "Input should be a valid string"), ([["a"]], "Input should be a valid string")],
    )
    def test_commands_shape(self, commands, message):
        issue = issues_of(task(commands=commands))[0]
        assert issue.path.startswith("commands")
        assert issue.message == message

    def test_numbers_in_commands_become_text(self):
        assert parse(commands=["echo", 1, 2.5]).commands == ["echo", "1", "2.5"]


# ---- BaseRunConfiguration fields -----------------------------------------------------------


class TestDefaults:
    def test_defaults(self):
        cfg = parse_configuration({"type": "task", "commands": ["x"]})
        assert cfg.name is None
        assert cfg.image is None
        assert cfg.user is None
        assert cfg.privileged is False
        assert cfg.entrypoint is None
        assert cfg.working_dir is None
        assert cfg.home_dir == "/root"
        assert cfg.registry_auth is None
        assert cfg.python is None
        assert cfg.nvcc is None
        assert cfg.single_branch is None
        assert dict(cfg.env.items()) == {}
        assert cfg.shell is None
        assert cfg.resources == ResourcesSpec()
        assert cfg.priority is None
        assert cfg.volumes == []
        assert cfg.docker is None
        assert cfg.repos == []
        assert cfg.files == []
        assert cfg.dstack is False
        assert cfg.setup == []
        assert cfg.ports == []
        assert cfg.nodes is None
        assert cfg.groups is None

    @pytest.mark.parametrize(
        ("field", "raw", "value"),
        [
            ("name", "train-llm", "train-llm"),
            ("name", 5, "5"),
            ("image", "ubuntu:24.04", "ubuntu:24.04"),
            ("privileged", True, True),
            ("privileged", "yes", True),
            ("entrypoint", "python -m x", "python -m x"),
            ("working_dir", "/workflow", "/workflow"),
            ("working_dir", "relative", "relative"),  # rejected only at submission
            ("home_dir", "/home/me", "/home/me"),
            ("nvcc", True, True),
            ("single_branch", False, False),
            ("dstack", True, True),
            ("setup", ["pip install x"], ["pip install x"]),
            ("docker", False, False),
        ],
    )
    def test_simple_fields(self, field, raw, value):
        assert getattr(parse(**{field: raw}), field) == value

    @pytest.mark.parametrize(
        ("field", "raw"),
        [("privileged", "maybe"), ("privileged", None), ("dstack", "x"), ("nvcc", "x"), ("setup", "pip install x"), ("home_dir", None)],
    )
    def test_simple_field_errors(self, field, raw):
        assert issues_of(task(**{field: raw}))[0].path == field


class TestPython:
    @pytest.mark.parametrize(
        ("raw", "version"),
        [
            ("3.9", PythonVersion.PY39),
            ("3.10", PythonVersion.PY310),
            ("3.11", PythonVersion.PY311),
            ("3.12", PythonVersion.PY312),
            ("3.13", PythonVersion.PY313),
            ("3.14", PythonVersion.PY314),
            (3.9, PythonVersion.PY39),
            (3.1, PythonVersion.PY310),  # YAML `python: 3.10` is the float 3.1
            (3.10, PythonVersion.PY310),
            (3.11, PythonVersion.PY311),
            (3.12, PythonVersion.PY312),
        ],
    )
    def test_versions(self, raw, version):
        assert parse(python=raw).python == version

    @pytest.mark.parametrize("raw", ["3.8", "3.15", "3.1", "3", 3, 2.7, "latest"])
    def test_invalid(self, raw):
        issue = only_issue(task(python=raw))
        assert issue.path == "python"
        assert issue.message == "Input should be '3.9', '3.10', '3.11', '3.12', '3.13' or '3.14'"

    def test_dump(self):
        assert parse(python=3.1).model_dump(mode="json")["python"] == "3.10"


class TestMutualExclusions:
    @pytest.mark.parametrize(
        ("fields", "path", "message"),
        [
            ({"image": "ubuntu", "python": "3.10"}, "python", "`image` and `python` are mutually exclusive fields"),
            ({"python": "3.10", "image": "ubuntu"}, "python", "`image` and `python` are mutually exclusive fields"),
            ({"image": "ubuntu", "docker": True}, "docker", "`image` and `docker` are mutually exclusive fields"),
            ({"python": "3.11", "docker": True}, "docker", "`python` and `docker` are mutually exclusive fields"),
            ({"nvcc": True, "docker": True}, "docker", "`nvcc` and `docker` are mutually exclusive fields"),
        ],
    )
    def test_rejected(self, fields, path, message):
        issue = only_issue(task(**fields))
        assert (issue.path, issue.message) == (path, message)
        assert issue.hint == "keep only one of them"

    @pytest.mark.parametrize(
        "fields",
        [
            {"nvcc": True, "python": "3.12"},
            {"image": "ubuntu", "docker": False},
            {"image": "ubuntu", "nvcc": True},
            {"python": "3.12", "docker": False},
            {"nvcc": False, "docker": True},
            {"image": "", "python": "3.12"},  # an empty image does not count, as in dstack
            {"image": "ubuntu", "python": None},
            {"docker": True, "privileged": False},
        ],
    )
    def test_allowed(self, fields):
        parse(**fields)


class TestUser:
    @pytest.mark.parametrize("user", ["ubuntu", "1000", "1000:1000", "root:root", "app:1000", "0:0", 1000])
    def test_valid(self, user):
        assert parse(user=user).user == str(user)

    @pytest.mark.parametrize(
        ("user", "problem"),
        [
            ("a:b:c", "too many parts"),
            ("", "empty user name or id"),
            (":group", "empty user name or id"),
            ("user:", "empty group name or id"),
            ("-1", "negative uid -1"),
            ("user:-5", "negative gid -5"),
        ],
    )
    def test_invalid(self, user, problem):
        issue = only_issue(task(user=user))
        assert issue.path == "user"
        assert issue.message.startswith(f"invalid user format: {problem}")


class TestShell:
    @pytest.mark.parametrize("shell", [None, "sh", "bash", "/usr/bin/zsh", "/bin/bash"])
    def test_valid(self, shell):
        assert parse(shell=shell).shell == shell

    @pytest.mark.parametrize("shell", ["zsh", "", "bin/bash", "./sh", "~/bin/sh", "fish"])
    def test_invalid(self, shell):
        issue = only_issue(task(shell=shell))
        assert (issue.path, issue.message) == ("shell", "The value must be `sh`, `bash`, or an absolute path")

    @pytest.mark.parametrize(
        ("fields", "effective"),
        [
            ({}, "/bin/bash"),
            ({"image": "ubuntu"}, "/bin/sh"),
            ({"shell": "sh"}, "/bin/sh"),
            ({"shell": "bash", "image": "ubuntu"}, "/bin/bash"),
            ({"shell": "/usr/bin/zsh"}, "/usr/bin/zsh"),
        ],
    )
    def test_effective_shell(self, fields, effective):
        assert parse(**fields).effective_shell == effective


class TestRegistryAuth:
    def test_valid(self):
        auth = parse(registry_auth={"username": "u", "password": "p"}).registry_auth
        assert (auth.username, auth.password) == ("u", "p")

    def test_hashable_and_frozen(self):
        auth = RegistryAuth(username="username", password="password")
        hash(auth)
        with pytest.raises(ValueError):
            auth.username = "other"

    def test_password_is_masked(self):
        auth = RegistryAuth(username="u", password="s3cret")
        assert "s3cret" not in repr(auth)
        assert "***" in repr(auth)

    def test_interpolation_left_for_later(self):
        auth = parse(registry_auth={"username": "${{ env.USER }}", "password": "${{ secrets.TOKEN }}"}).registry_auth
        assert auth.password == "${{ secrets.TOKEN }}"

    @pytest.mark.parametrize(
        ("auth", "path", "message"),
        [
            ({"username": "u"}, "registry_auth.password", "Field required"),
            ({"password": "p"}, "registry_auth.username", "Field required"),
            ({"username": "u", "password": "p", "token": "t"}, "registry_auth.token", "unknown field `token`"),
            ("u:p", "registry_auth", "Input should be a valid dictionary"),
        ],
    )
    def test_invalid(self, auth, path, message):
        issue = only_issue(task(registry_auth=auth))
        assert issue.path == path
        assert message in issue.message

    def test_numbers_become_text(self):
        assert parse(registry_auth={"username": 1, "password": 2}).registry_auth.password == "2"


# ---- ports ---------------------------------------------------------------------------------


class TestPorts:
    @pytest.mark.parametrize(
        ("port", "local", "container"),
        [
            (8080, 8080, 8080),
            ("8080", 8080, 8080),
            ("80:8080", 80, 8080),
            ("*:8080", None, 8080),
            ({"container_port": 80}, None, 80),
            ({"local_port": 1, "container_port": 2}, 1, 2),
            (65535, 65535, 65535),
            (1, 1, 1),
        ],
    )
    def test_forms(self, port, local, container):
        (mapping,) = parse(ports=[port]).ports
        assert (mapping.local_port, mapping.container_port) == (local, container)

    @pytest.mark.parametrize(
        ("port", "message"),
        [
            (0, "Input should be greater than 0"),
            (-1, "Input should be greater than 0"),
            (65536, "Input should be less than or equal to 65535"),
            ("0:80", "Input should be greater than 0"),
            ("80:70000", "Input should be less than or equal to 65535"),
            ("8080:", "Invalid port mapping `8080:`"),
            ("abc", "Invalid port mapping `abc`"),
            ("*", "Invalid port mapping `*`"),
            (":80", "Invalid port mapping `:80`"),
            ("10:20:30", "Invalid port mapping `10:20:30`"),
            (" 80", "Invalid port mapping ` 80`"),
            ("*:*", "Invalid port mapping `*:*`"),
            (1.5, "Input should be a valid dictionary or instance of PortMapping"),
            (None, "no value given"),
            ({"local_port": 80}, "Field required"),
            ({"container_port": 80, "protocol": "udp"}, "unknown field `protocol`"),
        ],
    )
    def test_invalid(self, port, message):
        issue = issues_of(task(ports=[port]))[0]
        assert issue.path.startswith("ports[0]")
        assert message in issue.message

    def test_invalid_mapping_explains_the_forms(self):
        assert "use PORT, LOCAL:PORT or *:PORT" in only_issue(task(ports=["x"])).message

    def test_parse_and_str(self):
        assert PortMapping.parse("80:8080") == PortMapping(local_port=80, container_port=8080)
        assert str(PortMapping.parse("*:8080")) == "*:8080"
        assert str(PortMapping.parse("8080")) == "8080:8080"
        with pytest.raises(ValueError, match="Invalid port mapping"):
            PortMapping.parse("8080:")

    def test_reserved_ports_are_parsed_then_filtered(self):
        cfg = parse(ports=[8000, 10000, "*:10999", 11000])
        assert [p.container_port for p in cfg.ports] == [8000, 10000, 10999, 11000]
        assert [p.container_port for p in filter_reserved_ports(cfg.ports)] == [8000, 11000]

    def test_dump(self):
        assert parse(ports=["*:80", 22]).model_dump(mode="json")["ports"] == [
            {"local_port": None, "container_port": 80},
            {"local_port": 22, "container_port": 22},
        ]


# ---- volumes -------------------------------------------------------------------------------


class TestVolumes:
    @pytest.mark.parametrize(
        ("volume", "expected"),
        [
            ("data:/data", VolumeMountPoint(name="data", path="/data")),
            ("data:/data/", VolumeMountPoint(name="data", path="/data")),
            ("data:/a//b", VolumeMountPoint(name="data", path="/a/b")),
            ("/mnt/cache:/cache", InstanceMountPoint(instance_path="/mnt/cache", path="/cache")),
            ("/:/host", InstanceMountPoint(instance_path="/", path="/host")),
            ({"name": "v", "path": "/p"}, VolumeMountPoint(name="v", path="/p")),
            ({"name": ["v-aws", "v-gcp"], "path": "/p"}, VolumeMountPoint(name=["v-aws", "v-gcp"], path="/p")),
            ({"name": "v-${{ dstack.node_rank }}", "path": "/p"}, VolumeMountPoint(name="v-${{ dstack.node_rank }}", path="/p")),
            (
                {"instance_path": "/h", "path": "/p", "optional": True},
                InstanceMountPoint(instance_path="/h", path="/p", optional=True),
            ),
        ],
    )
    def test_forms(self, volume, expected):
        assert parse(volumes=[volume]).volumes == [expected]

    @pytest.mark.parametrize(
        ("volume", "message"),
        [
            ("data:data", "path must be absolute: data"),
            ("data:/a/../b", ".. are not allowed: /a/../b"),
            ("data:", "empty path"),
            ("./rel:/p", "path must be absolute: ./rel"),
            ("/h/../x:/p", ".. are not allowed: /h/../x"),
            ("data", "invalid mount point format: data"),
            ("a:b:c", "invalid mount point format: a:b:c"),
            ("", "invalid mount point format"),
        ],
    )
    def test_invalid_strings(self, volume, message):
        issue = only_issue(task(volumes=[volume]))
        assert issue.path == "volumes[0]"
        assert message in issue.message

    @pytest.mark.parametrize(
        "volume",
        [
            {"name": "v"},
            {"path": "/p"},
            {"name": "v", "path": "rel"},
            {"instance_path": "h", "path": "/p"},
            {"name": "v", "path": "/p", "readonly": True},
            5,
        ],
    )
    def test_invalid_objects(self, volume):
        assert all(i.path.startswith("volumes[0]") for i in issues_of(task(volumes=[volume])))

    def test_dump(self):
        cfg = parse(volumes=["v:/data", "/h:/p"])
        assert cfg.model_dump(mode="json")["volumes"] == [
            {"name": "v", "path": "/data"},
            {"instance_path": "/h", "path": "/p", "optional": False},
        ]


# ---- repos and files -----------------------------------------------------------------------


class TestRepos:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (".", RepoSpec(local_path=".", path=".")),
            ("rel/path", RepoSpec(local_path="rel/path")),
            ("/abs/path/", RepoSpec(local_path="/abs/path/")),
            (".:/repo", RepoSpec(local_path=".", path="/repo")),
            ("rel/path:/repo", RepoSpec(local_path="rel/path", path="/repo")),
            ("/abs/path/:/repo", RepoSpec(local_path="/abs/path/", path="/repo")),
            ("C:\\repo", RepoSpec(local_path="C:\\repo", path=".")),
            ("C:\\repo:/repo", RepoSpec(local_path="C:\\repo", path="/repo")),
            ("c:/repo", RepoSpec(local_path="c:/repo")),
            ("https://example.com/repo.git", RepoSpec(url="https://example.com/repo.git", path=".")),
            ("https://example.com/repo.git:/repo", RepoSpec(url="https://example.com/repo.git", path="/repo")),
            ("git@example.com:repo.git", RepoSpec(url="git@example.com:repo.git", path=".")),
            ("git@example.com:repo.git:/repo", RepoSpec(url="git@example.com:repo.git", path="/repo")),
            ("ssh://git@host/r.git", RepoSpec(url="ssh://git@host/r.git")),
            (".:~", RepoSpec(local_path=".", path="~")),
            (".:~/repo", RepoSpec(local_path=".", path="~/repo")),
        ],
    )
    def test_shorthand(self, value, expected):
        assert parse(repos=[value]).repos == [expected]

    def test_object_form(self):
        (repo,) = parse(
            repos=[{"url": "https://h/r.git", "branch": "dev", "hash": "abc123", "path": "/r", "if_exists": "skip"}]
        ).repos
        assert (repo.url, repo.branch, repo.hash, repo.path, repo.if_exists) == (
            "https://h/r.git",
            "dev",
            "abc123",
            "/r",
            RepoExistsAction.SKIP,
        )
        assert parse(repos=["."]).repos[0].if_exists == RepoExistsAction.ERROR

    @pytest.mark.parametrize(
        ("repos", "path", "message"),
        [
            ([".", "."], "repos", "A maximum of one repo is currently supported"),
            (["./foo:bar:baz"], "repos[0]", "Invalid repo: ./foo:bar:baz"),
            ([{"local_path": ".", "url": "https://h/r.git"}], "repos[0]", "`local_path` and `url` are mutually exclusive"),
            ([{}], "repos[0]", "Either `local_path` or `url` must be specified"),
            ([""], "repos[0]", "Either `local_path` or `url` must be specified"),
            ([{"local_path": ".", "path": "~alice/repo"}], "repos[0].path", "`~username` syntax is not supported"),
            ([".:~bob"], "repos[0]", "`~username` syntax is not supported"),
            ([{"url": "https://h", "if_exists": "replace"}], "repos[0].if_exists", "Input should be 'error' or 'skip'"),
            ([{"url": "https://h", "ref": "main"}], "repos[0].ref", "unknown field `ref`"),
        ],
    )
    def test_invalid(self, repos, path, message):
        issue = only_issue(task(repos=repos))
        assert issue.path == path
        assert message in issue.message


class TestFiles:
    @pytest.mark.parametrize("value", ["./file", "file", "~/file", "/file", "~/.cache/x"])
    def test_only_local_path(self, value):
        assert parse(files=[value]).files == [FilePathMapping(local_path=value, path=value)]

    @pytest.mark.parametrize(
        ("value", "local", "path"),
        [
            ("./foo:./bar", "./foo", "./bar"),
            ("src:/app/src", "src", "/app/src"),
            ("C:\\dir:dir", "C:\\dir", "dir"),
            ("d:/data:/data", "d:/data", "/data"),
            ("~/.ssh/config:~/.ssh/config", "~/.ssh/config", "~/.ssh/config"),
        ],
    )
    def test_both_paths(self, value, local, path):
        assert parse(files=[value]).files == [FilePathMapping(local_path=local, path=path)]

    def test_object_form(self):
        assert parse(files=[{"local_path": "a", "path": "/b"}]).files == [FilePathMapping(local_path="a", path="/b")]

    @pytest.mark.parametrize(
        ("value", "path", "message"),
        [
            ("./foo:bar:baz", "files[0]", "invalid file path mapping: ./foo:bar:baz"),
            ("a:C:\\x", "files[0]", "invalid file path mapping: a:C:\\x"),
            ("C:\\", "files[0]", "path must be a Unix file path: C:\\"),
            ("d:/path/to", "files[0]", "path must be a Unix file path: d:/path/to"),
            ("a:/b", "files[0]", "path must be a Unix file path: a:/b"),  # one letter reads as a drive
            ({"local_path": "a"}, "files[0].path", "Field required"),
            ({"local_path": "a", "path": "C:/x"}, "files[0].path", "path must be a Unix file path: C:/x"),
            ({"local_path": "a", "path": "b", "mode": 600}, "files[0].mode", "unknown field `mode`"),
        ],
    )
    def test_invalid(self, value, path, message):
        issue = only_issue(task(files=[value]))
        assert issue.path == path
        assert message in issue.message


# ---- nodes and groups ----------------------------------------------------------------------


def grouped(groups, **fields) -> dict:
    return {"type": "task", "image": "debian", "groups": groups, **fields}


class TestNodes:
    def test_int_nodes(self):
        cfg = parse(nodes=2)
        assert cfg.nodes == 2
        assert cfg.groups is None
        assert cfg.nodes_num == 2
        (group,) = cfg.node_groups
        assert (group.name, group.nodes) == ("0", 2)

    def test_omitted_nodes_is_one_node_group(self):
        cfg = parse_configuration(task(commands=["a", "b"], ports=[8000], resources={"gpu": "H100:8"}))
        assert cfg.nodes is None
        assert cfg.nodes_num == 1
        (group,) = cfg.node_groups
        assert group == NodeGroup(
            name="0", nodes=1, commands=["a", "b"], ports=cfg.ports, resources=cfg.resources
        )

    @pytest.mark.parametrize(("nodes", "message"), [(0, "greater than or equal to 1"), (-1, "greater than or equal to 1"), (2.5, "valid integer"), ("two", "valid integer")])
    def test_invalid(self, nodes, message):
        issue = only_issue(task(nodes=nodes))
        assert issue.path == "nodes" and message in issue.message

    def test_numeric_string(self):
        assert parse(nodes="3").nodes == 3

    def test_unset_nodes_not_in_dump(self):
        assert parse().model_dump(mode="json")["nodes"] is None


class TestGroups:
    def test_groups_and_default_names(self):
        cfg = parse_configuration(
            grouped([{"nodes": 2, "commands": ["echo head"]}, {"name": "workers", "nodes": 1, "commands": ["echo worker"]}])
        )
        assert cfg.nodes is None
        assert cfg.nodes_num == 3
        assert [g.name for g in cfg.node_groups] == ["0", "workers"]
        assert [g.commands for g in cfg.node_groups] == [["echo head"], ["echo worker"]]
        assert cfg.node_groups is cfg.groups

    def test_group_defaults(self):
        (group,) = parse_configuration(grouped([{}])).groups
        assert (group.name, group.nodes, group.commands, group.ports) == ("0", 1, [], [])
        assert group.resources == ResourcesSpec()

    def test_per_group_fields(self):
        cfg = parse_configuration(
            grouped(
                [
                    {"name": "head", "commands": ["a"], "ports": [8265, "*:6379"], "resources": {"gpu": 0}},
                    {"name": "gpu-workers", "nodes": 4, "commands": ["b"], "resources": {"gpu": "H100:8"}},
                ]
            )
        )
        head, workers = cfg.groups
        assert [p.container_port for p in head.ports] == [8265, 6379]
        assert head.resources.gpu.count.max == 0
        assert workers.resources.gpu.name == ["H100"]
        assert workers.nodes == 4

    def test_top_level_resources_are_not_inherited(self):
        cfg = parse_configuration(grouped([{"nodes": 1, "commands": ["true"]}], resources={"gpu": "H100"}))
        assert cfg.groups[0].resources == ResourcesSpec()
        assert cfg.resources.gpu.name == ["H100"]

    def test_round_trip_via_dump(self):
        cfg = parse_configuration(
            grouped([{"nodes": 2, "commands": ["echo head"], "ports": [8000]}, {"name": "workers", "commands": ["echo worker"]}])
        )
        dumped = cfg.model_dump(mode="json")
        assert dumped["nodes"] is None
        assert dumped["groups"][0]["name"] == "0"
        again = parse_configuration(dumped)
        assert again.nodes_num == 3
        assert [g.name for g in again.node_groups] == ["0", "workers"]
        assert again.node_groups[0].ports[0].container_port == 8000
        assert again == cfg

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (grouped([{"commands": ["x"]}], nodes=1), "`nodes` and `groups` are mutually exclusive"),
            (grouped([{"commands": ["x"]}], nodes=2), "`nodes` and `groups` are mutually exclusive"),
            (grouped([]), "`groups` cannot be an empty list"),
            (
                grouped([{"name": "1", "commands": ["x"]}, {"commands": ["y"]}]),
                "Duplicate node group names found: ['1']. Each node group must have a unique name.",
            ),
            (
                grouped([{"name": "head", "commands": ["x"]}, {"name": "head", "commands": ["y"]}]),
                "Duplicate node group names found: ['head']",
            ),
            (
                grouped([{"commands": ["x"]}, {"name": "0", "commands": ["y"]}]),
                "Duplicate node group names found: ['0']",
            ),
            (
                grouped([{"commands": ["echo group"]}], commands=["echo top"]),
                "Top-level `commands` is not allowed when `groups` is set. Specify `commands` in each node group instead.",
            ),
            (
                grouped([{"commands": ["x"]}], ports=[8000]),
                "Top-level `ports` is not allowed when `groups` is set. Specify `ports` in each node group instead.",
            ),
            (
                grouped([{"commands": ["x"]}], entrypoint="python"),
                "Top-level `entrypoint` is not allowed when `groups` is set. Specify `commands` in each node group instead.",
            ),
            (
                {"type": "task", "groups": [{"name": "head", "nodes": 1}]},
                "Node group 'head': either `commands` must be set in the group, or `image` at the task level.",
            ),
            (
                {"type": "task", "groups": [{"commands": ["x"]}, {}]},
                "Node group '1': either `commands` must be set in the group",
            ),
            ({"type": "task", "groups": [], "commands": ["x"]}, "`groups` cannot be an empty list"),
        ],
    )
    def test_rules(self, data, message):
        issue = only_issue(data)
        assert message in issue.message

    @pytest.mark.parametrize("name", ["Bad_Name", "", "-lead", "UPPER", "a" * 41, "a.b", "a b", -1])
    def test_invalid_group_name(self, name):
        issue = only_issue(grouped([{"name": name, "commands": ["x"]}]))
        assert issue.path == "groups[0].name"
        assert issue.message == "Node group name should match regex '^[a-z0-9][a-z0-9-]{0,39}$'"

    @pytest.mark.parametrize("name", ["a", "0", "head", "gpu-workers", "a" * 40, "9lives", "a-", 7])
    def test_valid_group_name(self, name):
        assert parse_configuration(grouped([{"name": name, "commands": ["x"]}])).groups[0].name == str(name)

    def test_image_at_task_level_satisfies_groups(self):
        cfg = parse_configuration({"type": "task", "image": "ubuntu", "groups": [{}, {"nodes": 2}]})
        assert [g.name for g in cfg.groups] == ["0", "1"]
        assert cfg.nodes_num == 3

    def test_empty_image_counts_for_groups(self):
        # dstack's per-group check is `image is not None` (the top-level one is truthiness).
        parse_configuration({"type": "task", "image": "", "groups": [{}]})

    def test_null_groups_is_no_groups(self):
        cfg = parse(groups=None, nodes=2)
        assert cfg.groups is None and cfg.nodes_num == 2

    @pytest.mark.parametrize(
        ("group", "path"),
        [
            ({"commands": ["x"], "image": "u"}, "groups[0].image"),
            ({"commands": ["x"], "env": {}}, "groups[0].env"),
            ({"commands": ["x"], "resources": {"gpus": 1}}, "groups[0].resources.gpus"),
            ({"commands": ["x"], "ports": [{"port": 1}]}, "groups[0].ports[0].port"),
        ],
    )
    def test_unknown_keys_in_groups(self, group, path):
        assert path in [i.path for i in issues_of(grouped([group]))]

    @pytest.mark.parametrize(("nodes", "message"), [(0, "greater than or equal to 1"), ("x", "valid integer")])
    def test_group_nodes(self, nodes, message):
        issue = only_issue(grouped([{"nodes": nodes, "commands": ["x"]}]))
        assert issue.path == "groups[0].nodes" and message in issue.message

    @pytest.mark.parametrize("groups", ["x", [None], [["a"]], {"name": "a"}])
    def test_groups_shape(self, groups):
        assert issues_of(grouped(groups))[0].path.startswith("groups")


# ---- unknown keys --------------------------------------------------------------------------


class TestUnknownKeys:
    @pytest.mark.parametrize(
        ("fields", "path", "hint"),
        [
            ({"comands": ["x"]}, "comands", "did you mean `commands`?"),
            ({"enviroment": {}}, "enviroment", None),
            ({"imagee": "u"}, "imagee", "did you mean `image`?"),
            ({"max_durations": "1h"}, "max_durations", "did you mean `max_duration`?"),
            ({"xyzzy": 1}, "xyzzy", "remove it; see `dstack-ray config schema` for the fields dstack defines"),
            ({"gpu": "A100"}, "gpu", "`gpu` belongs under `resources:`; indent it below that key"),
            ({"memory": "8GB"}, "memory", "`memory` belongs under `resources:`; indent it below that key"),
            ({"port": 8000}, "port", "did you mean `ports`?"),
            ({"replicas": 2}, "replicas", None),
            ({"resources": {"gpus": 1}}, "resources.gpus", "did you mean `gpu`?"),
            ({"resources": {"gpu": {"counts": 1}}}, "resources.gpu.counts", "did you mean `count`?"),
            ({"retry": {"events": ["error"]}}, "retry.events", None),
            ({"utilization_policy": {"min_gpu_utilization": 1, "time_window": "1h", "x": 1}}, "utilization_policy.x", None),
            ({"schedule": {"cron": "0 0 * * *", "tz": "UTC"}}, "schedule.tz", None),
            ({"registry_auth": {"username": "u", "password": "p", "x": 1}}, "registry_auth.x", None),
            ({"repos": [{"local_path": ".", "x": 1}]}, "repos[0].x", None),
            ({"files": [{"local_path": "a", "path": "b", "x": 1}]}, "files[0].x", None),
            ({"ports": [{"container_port": 1, "x": 1}]}, "ports[0].x", None),
            ({"backend_options": [{"type": "vastai", "x": 1}]}, "backend_options[0].x", None),
            ({"fleets": [{"name": "f", "x": 1}]}, "fleets[0].x", None),
            ({"env": {"A": {"key": "A", "x": 1}}}, "env.A.x", None),
        ],
    )
    def test_rejected(self, fields, path, hint):
        issues = issues_of(task(**fields))
        issue = next(i for i in issues if i.path == path)
        assert issue.message == f"unknown field `{path.rsplit('.', 1)[-1].split(']')[-1]}`"
        if hint:
            assert issue.hint == hint

    def test_every_unknown_key_is_reported(self):
        issues = issues_of(task(aaa=1, bbb=2, resources={"ccc": 3}))
        assert sorted(i.path for i in issues) == ["aaa", "bbb", "resources.ccc"]


class TestFieldCoverage:
    """Every field dstack's TaskConfiguration defines (as of the reference commit) exists here."""

    DSTACK_FIELDS = {
        # BaseRunConfiguration
        "type", "name", "image", "user", "privileged", "entrypoint", "working_dir", "home_dir",
        "registry_auth", "python", "nvcc", "single_branch", "env", "shell", "resources", "priority",
        "volumes", "docker", "repos", "files", "dstack", "setup",
        # ConfigurationWithCommandsParams, ConfigurationWithPortsParams, TaskConfigurationParams
        "commands", "ports", "nodes", "groups",
        # ProfileParams
        "backends", "regions", "availability_zones", "instance_types", "reservation", "spot_policy",
        "retry", "max_duration", "stop_duration", "max_price", "creation_policy", "idle_duration",
        "utilization_policy", "startup_order", "stop_criteria", "schedule", "fleets", "instances",
        "tags", "backend_options",
    }

    def test_same_fields(self):
        assert set(TaskConfiguration.model_fields) == self.DSTACK_FIELDS

    def test_node_group_fields(self):
        assert set(NodeGroup.model_fields) == {"name", "nodes", "resources", "commands", "ports"}


# ---- submission checks (dstack server side) ------------------------------------------------


def submit(data: dict) -> None:
    check_submittable(parse_configuration(data))


def submit_issues(data: dict) -> list:
    with pytest.raises(ConfigurationError) as info:
        submit(data)
    return info.value.issues


class TestSubmission:
    @pytest.mark.parametrize("name", ["ab", "train-llm", "a" + "b" * 40, "r2d2", "a-"])
    def test_valid_run_names(self, name):
        submit(task(name=name))

    @pytest.mark.parametrize("name", ["a", "Train", "my_run", "1run", "-run", "a" + "b" * 41, "run.1"])
    def test_invalid_run_names(self, name):
        (issue,) = submit_issues(task(name=name))
        assert (issue.path, issue.message) == ("name", "Resource name should match regex '^[a-z][a-z0-9-]{1,40}$'")

    def test_negative_retry_duration(self):
        (issue,) = submit_issues(task(retry={"duration": -1}))
        assert (issue.path, issue.message) == ("retry.duration", "retry.duration cannot be negative")

    @pytest.mark.parametrize("retry", [True, {"duration": 0}, {"duration": "1h"}, False])
    def test_retry_ok(self, retry):
        submit(task(retry=retry))

    @pytest.mark.parametrize("working_dir", ["/w", "/", "w", "./w", "~", "~/w"])
    def test_working_dir_relative_and_home_are_accepted(self, working_dir):
        """Deviation (README): dstack's CLI wants an absolute working_dir; here `~/x` and the
        legacy relative form are accepted, since host-mode tasks may not use absolute paths."""
        submit(task(working_dir=working_dir))

    def test_all_problems_reported_together(self):
        issues = submit_issues(task(name="Bad", retry={"duration": -5}))
        assert sorted(i.path for i in issues) == ["name", "retry.duration"]


class TestHostPaths:
    """Without `image`, targets outside the run's directories are refused before submission."""

    @pytest.mark.parametrize("target", ["x", "./x/y", "~", "~/x", "~/.ssh/id_rsa", "a/../b", "/root/.ssh/id_rsa", "/workflow/examples", "/workflow", "/root"])
    def test_inside_the_run_is_accepted(self, target):
        check_host_paths(parse_configuration(task(files=[f"local:{target}"], working_dir=target)))

    @pytest.mark.parametrize(
        ("target", "why"),
        [
            ("/etc/x", "absolute path"),
            ("/rootfs/x", "absolute path"),
            ("/workflow/../etc", "absolute path"),
            ("/", "absolute path"),
            ("../x", "`..` leads outside"),
            ("~/../x", "`..` leads outside"),
            ("a/../../x", "`..` leads outside"),
            ("~root/x", "`~user` paths"),
        ],
    )
    def test_outside_is_refused_naming_field_and_path(self, target, why):
        for field, data in [
            ("files[1]", task(files=["ok:ok", f"local:{target}"])),
            ("working_dir", task(working_dir=target)),
        ] + ([] if target.startswith("~r") else [  # the repo path rejects `~user` when parsed
            ("repos[0].path", task(repos=[{"url": "https://github.com/org/repo.git", "path": target}])),
        ]):
            with pytest.raises(ConfigurationError) as info:
                check_host_paths(parse_configuration(data))
            (issue,) = info.value.issues
            assert issue.path == field
            assert target in issue.message and why in issue.message
            assert "`image:`" in issue.hint

    @pytest.mark.parametrize("target", ["/etc/x.conf", "/opt/data", "/rootfs/x", "/workflow/../etc"])
    def test_other_absolute_targets_are_accepted_where_nodes_give_views(self, target):
        check_host_paths(parse_configuration(task(files=[f"local:{target}"], working_dir=target)), views=True)

    @pytest.mark.parametrize(("target", "why"), [("/", "root directory"), ("/proc/x", "/proc is the node kernel's"), ("/dev/shm/x", "/dev"), ("../x", "`..` leads outside")])
    def test_what_no_view_can_hold_is_refused(self, target, why):
        with pytest.raises(ConfigurationError) as info:
            check_host_paths(parse_configuration(task(files=[f"local:{target}"])), views=True)
        assert why in info.value.issues[0].message

    def test_the_refusal_says_no_node_gives_a_view(self):
        with pytest.raises(ConfigurationError) as info:
            check_host_paths(parse_configuration(task(files=["local:/etc/x.conf"])))
        assert "no node of the cluster gives jobs a private view" in info.value.issues[0].message

    def test_line_of_the_entry_is_named(self, tmp_path):
        path = tmp_path / "t.dstack.yml"
        path.write_text("type: task\ncommands: [x]\nfiles:\n  - a:b\n  - c:/etc/passwd\n")
        with pytest.raises(ConfigurationError) as info:
            check_host_paths(load_configuration(path))
        assert info.value.issues[0].line == 5 and str(path) in str(info.value)


    UNSUPPORTED_GPU_SPECS = ["amd", "MI300X", "intel", "Gaudi2", "tenstorrent", "n300", "tt"]

    @pytest.mark.parametrize("gpu", UNSUPPORTED_GPU_SPECS)
    def test_gpu_not_supported_by_the_default_image(self, gpu):
        (issue,) = submit_issues(task(resources={"gpu": gpu}))
        assert issue.path == "resources.gpu"
        assert issue.message.startswith("`image` must be set when the requested accelerator is not supported by the default image: [")

    def test_vendor_list_in_the_message(self):
        (issue,) = submit_issues(task(resources={"gpu": "MI300X"}))
        assert issue.message.endswith("the default image: ['amd']")

    @pytest.mark.parametrize("gpu", UNSUPPORTED_GPU_SPECS)
    @pytest.mark.parametrize(("image", "docker"), [("rocm/pytorch", None), (None, True)])
    def test_any_gpu_without_the_default_image(self, gpu, image, docker):
        fields = {"resources": {"gpu": gpu}}
        if image:
            fields["image"] = image
        if docker:
            fields["docker"] = docker
        submit(task(**fields))

    @pytest.mark.parametrize("gpu", ["nvidia", "H100", "google", "tpu", "v5litepod-8", "UNKNOWN1000", "A100,UNKNOWN1000"])
    def test_gpu_supported_by_the_default_image(self, gpu):
        submit(task(resources={"gpu": gpu}))

    def test_any_vendor_if_no_gpu_requested(self):
        submit(task(resources={"gpu": {"vendor": "amd", "count": 0}}))

    def test_node_groups_requiring_image(self):
        data = {
            "type": "task",
            "groups": [
                {"commands": ["echo"], "resources": {"gpu": "MI300X"}},
                {"commands": ["echo"], "resources": {"gpu": "H100"}},
                {"commands": ["echo"], "resources": {"gpu": "n300"}},
            ],
        }
        (issue,) = submit_issues(data)
        assert issue.path == "groups"
        assert issue.message.startswith("groups[0, 2]: `image` must be set")
        assert issue.message.endswith("['amd', 'tenstorrent']")

    def test_node_group_with_task_level_image(self):
        submit({"type": "task", "image": "rocm", "groups": [{"commands": ["echo"], "resources": {"gpu": "MI300X"}}]})

    @pytest.mark.parametrize(
        ("fields", "path", "message"),
        [
            ({"resources": {"cpu": "arm:2"}}, "image", "`image` must be set when ARM CPU requested"),
            ({"resources": {"cpu": "arm:2"}, "docker": True}, "docker", "`docker: true` is not supported on ARM CPU"),
        ],
    )
    def test_arm(self, fields, path, message):
        (issue,) = submit_issues(task(**fields))
        assert (issue.path, issue.message) == (path, message)

    @pytest.mark.parametrize(
        "fields",
        [
            {"resources": {"cpu": "arm:2"}, "image": "ubuntu"},
            {"resources": {"gpu": "GH200"}},  # ARM GPUs are not rejected: the arch is not inferred
            {},
            {"resources": {"cpu": "x86:2"}},
            {"resources": {"gpu": "H100"}},
        ],
    )
    def test_arm_allowed(self, fields):
        submit(task(**fields))

    def test_node_groups_with_arm(self):
        data = {
            "type": "task",
            "groups": [
                {"commands": ["echo"], "resources": {"cpu": "arm:2"}},
                {"commands": ["echo"]},
                {"commands": ["echo"], "resources": {"cpu": "arm:4"}},
            ],
        }
        (issue,) = submit_issues(data)
        assert issue.message == "groups[0, 2]: `image` must be set when ARM CPU requested"
        data["image"] = "ubuntu"
        submit(data)


class TestGpuVendorInference:
    """dstack's set_run_spec_resources_defaults: which vendor the server fills in."""

    @pytest.mark.parametrize(
        ("gpu", "vendor"),
        [
            ("A100", AcceleratorVendor.NVIDIA),
            ("a40,l40", AcceleratorVendor.NVIDIA),
            ("h100", AcceleratorVendor.NVIDIA),
            ("RTX4070Ti", AcceleratorVendor.NVIDIA),
            ("GB300", AcceleratorVendor.NVIDIA),
            ("Mi300X", AcceleratorVendor.AMD),
            ("Gaudi2", AcceleratorVendor.INTEL),
            ("n300", AcceleratorVendor.TENSTORRENT),
            ("tt-galaxy-wh", AcceleratorVendor.TENSTORRENT),
            ("v5litepod-8", AcceleratorVendor.GOOGLE),
            ("v3-64", AcceleratorVendor.GOOGLE),
            ("tpu-v2-8", AcceleratorVendor.GOOGLE),
        ],
    )
    def test_detected_by_names(self, gpu, vendor, caplog):
        caplog.set_level(logging.ERROR)
        spec = ResourcesSpec.model_validate({"gpu": gpu}).gpu
        assert inferred_gpu_vendor(spec, image="ubuntu", docker=None) == vendor

    @pytest.mark.parametrize("gpu", ["UNKNOWN1000", "A100,UNKNOWN1000", "A100,MI300X", "v5litepod", "v2-x"])
    def test_ambiguous_or_unknown_names(self, gpu):
        spec = ResourcesSpec.model_validate({"gpu": gpu}).gpu
        assert inferred_gpu_vendor(spec, image="ubuntu", docker=None) is None

    def test_user_vendor_is_kept(self):
        spec = ResourcesSpec.model_validate({"gpu": {"vendor": "amd", "name": ["A100"]}}).gpu
        assert inferred_gpu_vendor(spec, image="ubuntu", docker=None) == AcceleratorVendor.AMD

    def test_nvidia_for_the_default_image(self):
        spec = ResourcesSpec.model_validate({"gpu": "1"}).gpu
        assert inferred_gpu_vendor(spec, image=None, docker=None) == AcceleratorVendor.NVIDIA

    @pytest.mark.parametrize(("image", "docker"), [("ubuntu", None), (None, True)])
    def test_no_vendor_without_the_default_image(self, image, docker):
        spec = ResourcesSpec.model_validate({"gpu": "1"}).gpu
        assert inferred_gpu_vendor(spec, image=image, docker=docker) is None

    @pytest.mark.parametrize("gpu", ["0", {"vendor": "amd", "count": 0}, None])
    def test_no_vendor_when_no_gpu_requested(self, gpu):
        spec = ResourcesSpec.model_validate({"gpu": gpu}).gpu
        assert inferred_gpu_vendor(spec, image=None, docker=None) is None

    def test_default_gpu_spec_gets_nvidia(self):
        # `gpu` omitted is `0..`: the max is open, so the default image still implies NVIDIA.
        resources = with_server_defaults(ResourcesSpec(), image=None, docker=None)
        assert resources.gpu.vendor == AcceleratorVendor.NVIDIA
        assert resources.gpu.count.min == 0 and resources.gpu.count.max is None

    def test_with_server_defaults_keeps_the_rest(self):
        resources = ResourcesSpec.model_validate({"gpu": "H100:8", "cpu": 16})
        filled = with_server_defaults(resources, image=None, docker=None)
        assert filled.gpu.vendor == AcceleratorVendor.NVIDIA
        assert filled.gpu.name == ["H100"] and filled.cpu == resources.cpu
        assert resources.gpu.vendor is None  # not changed in place
