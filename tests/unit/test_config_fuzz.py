"""Property tests: whatever a user writes, the configuration layer answers with a
TaskConfiguration or a ConfigurationError, never with another exception."""

from __future__ import annotations

import datetime
import logging

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dstack_ray.config import ConfigurationError, TaskConfiguration, parse_configuration, read_yaml
from dstack_ray.config.resources import CPUSpec, DiskSpec, GPUSpec, ResourcesSpec
from dstack_ray.config.task import NodeGroup

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(autouse=True)
def _quiet_tpu_prefix_warning(caplog):
    caplog.set_level(logging.ERROR, logger="dstack_ray.config.resources")


TOP_FIELDS = sorted(TaskConfiguration.model_fields)
NESTED_FIELDS = sorted(
    set(ResourcesSpec.model_fields)
    | set(GPUSpec.model_fields)
    | set(CPUSpec.model_fields)
    | set(DiskSpec.model_fields)
    | set(NodeGroup.model_fields)
    | {
        "min", "max", "on_events", "duration", "min_gpu_utilization", "time_window", "cron",
        "local_path", "url", "branch", "hash", "path", "if_exists", "instance_path", "optional",
        "local_port", "container_port", "username", "password", "project", "hostname", "fleet",
        "instance", "key", "offer_order", "min_reliability", "min_score",
    }
)

# Strings that exercise the grammars: ranges, units, shorthands, interpolation, cron, paths.
GRAMMAR_STRINGS = [
    "task", "service", "A100", "A100:2", "H100:80GB:1..2", "nvidia", "tpu", "tt", "tpu-v3-8",
    "amd:MI300X", "A10,A10G", "A100,:2", "A100:", ":", "::", "2..", "..4", "..", "...", "1...3",
    "3..1", "16GB..32", "512MB", "1TB", "1.5xb", "GB", "x86", "arm:4", "arm:x86", "4:arm:4",
    "off", "on", "5m", "-1", "1h30m", "1.5h", "2 h", "1H", "8080", "8080:", "*:80", "80:8080",
    "0", "65536", "a:b:c", "C:\\dir", "d:/x", "~alice/x", "~/x", "git@host:repo.git:/r",
    "https://host/r.git", "name:/data", "/host:/data", "data:rel", "/a/../b", "A=1", "A", "1A=x",
    "user:group", "1000:-1", "sh", "bash", "/bin/zsh", "zsh", "3.1", "3.10", "3.8",
    "${{ run.args }}", "$${{ x }}", "${{ groups[0].nodes[0].IP_ADDRESS }}", "${{ groups[0].x }}",
    "${{", "0 0 * * 7", "0 0 13 * fri", "0 0 last * *", "@daily", "*/0 * * * *", "p/f", "a/b/c",
    "vastai", "spot", "on-demand", "reuse", "master-first", "master-done", "no-capacity",
    "\n", "A=1\nB", "é", "\x00", "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(GRAMMAR_STRINGS),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=4),
)
keys = st.one_of(
    st.sampled_from(TOP_FIELDS),
    st.sampled_from(NESTED_FIELDS),
    st.text(max_size=8),
    st.integers(min_value=-3, max_value=3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        st.tuples(children, children),
    ),
    max_leaves=10,
)
# A few real fields with any values (plus a few other keys); `type: task` most of the time so
# the field validators and the cross-field (model) validators run, not just the type check.
configs = st.builds(
    lambda kind, fields, extra: {**extra, **fields, "type": kind},
    st.sampled_from(["task", "task", "task", "service", None, 1]),
    st.dictionaries(st.sampled_from([f for f in TOP_FIELDS if f != "type"]), values, max_size=6),
    st.dictionaries(keys, values, max_size=2),
)


# Field values that are mostly valid, so that many generated configurations parse and the
# properties of a parsed configuration get checked too.
PLAUSIBLE = {
    "name": st.sampled_from(["train", "my-run", "Bad_Name", 5]),
    "image": st.sampled_from(["ubuntu", "rocm/pytorch:latest", ""]),
    "user": st.sampled_from(["root", "1000:1000", "a:b:c"]),
    "privileged": st.booleans(),
    "entrypoint": st.sampled_from(["python", "/bin/sh -c"]),
    "working_dir": st.sampled_from(["/workflow", "rel"]),
    "registry_auth": st.fixed_dictionaries({"username": st.text(max_size=5), "password": st.text(max_size=5)}),
    "python": st.sampled_from(["3.9", "3.12", 3.1, 3.11, "3.8"]),
    "nvcc": st.booleans(),
    "single_branch": st.booleans(),
    "env": st.one_of(
        st.lists(st.sampled_from(["A=1", "B", "C=x=y", "D=", "1BAD"]), max_size=3),
        st.dictionaries(st.sampled_from(["A", "B", "PORT"]), st.one_of(st.text(max_size=5), st.integers())),
    ),
    "shell": st.sampled_from(["sh", "bash", "/bin/zsh", "zsh"]),
    "resources": st.fixed_dictionaries(
        {},
        optional={
            "cpu": st.sampled_from([2, "4..", "arm:8", "x86:2..8", {"min": 2}, "arm:x86"]),
            "memory": st.sampled_from(["8GB..", "16GB..64GB", 32, "1TB", "8GB..4GB"]),
            "shm_size": st.sampled_from(["1GB", 2]),
            "gpu": st.sampled_from(
                ["A100:2", "H100:80GB:1..8", "nvidia", "tpu:v3-8", 0, "amd:MI300X", "24GB..:2", "A100:2:3",
                 {"name": ["A10", "A10G"], "count": "1.."}, {"compute_capability": "8.0"}]
            ),
            "disk": st.sampled_from(["100GB..", "1TB", {"size": "200GB"}]),
        },
    ),
    "priority": st.integers(min_value=-1, max_value=101),
    "volumes": st.lists(st.sampled_from(["data:/data", "/mnt:/mnt", {"name": ["a", "b"], "path": "/p"}, "x:rel"]), max_size=2),
    "docker": st.booleans(),
    "repos": st.lists(
        st.sampled_from([".", "https://github.com/a/b.git:/repo", "git@github.com:a/b.git", {"url": "https://h/r.git", "branch": "main"}]),
        max_size=1,
    ),
    "files": st.lists(st.sampled_from(["src", "~/.cache/x", "data:/data", "C:\\x:y"]), max_size=2),
    "dstack": st.booleans(),
    "ports": st.lists(st.sampled_from([8080, "80:8080", "*:6006", {"container_port": 22}, 0]), max_size=2),
    "nodes": st.integers(min_value=0, max_value=4),
    "groups": st.lists(
        st.fixed_dictionaries(
            {"commands": st.lists(st.sampled_from(["a", "echo ${{ groups[0].nodes[0].IP_ADDRESS }}"]), min_size=1, max_size=2)},
            optional={"name": st.sampled_from(["head", "workers", "1"]), "nodes": st.integers(1, 3), "resources": st.just({"gpu": "H100:8"})},
        ),
        max_size=3,
    ),
    "spot_policy": st.sampled_from(["spot", "on-demand", "auto"]),
    "retry": st.one_of(
        st.booleans(),
        st.fixed_dictionaries(
            {},
            optional={
                "on_events": st.lists(st.sampled_from(["no-capacity", "interruption", "error"]), max_size=3),
                "duration": st.sampled_from(["1h", 600, "1d"]),
            },
        ),
    ),
    "max_duration": st.sampled_from(["off", "2h", 3600, True, False]),
    "stop_duration": st.sampled_from(["off", "5m", 30]),
    "idle_duration": st.sampled_from(["off", "5m", -1, 0]),
    "max_price": st.floats(min_value=0.01, max_value=10),
    "creation_policy": st.sampled_from(["reuse", "reuse-or-create"]),
    "utilization_policy": st.fixed_dictionaries({"min_gpu_utilization": st.integers(0, 100), "time_window": st.sampled_from(["5m", "1h", 600])}),
    "startup_order": st.sampled_from(["any", "master-first", "workers-first"]),
    "stop_criteria": st.sampled_from(["all-done", "master-done"]),
    "schedule": st.fixed_dictionaries({"cron": st.sampled_from(["0 8 * * *", ["0 8 * * mon-fri", "0 0 last * *"], "*/15 * * * *"])}),
    "fleets": st.lists(st.sampled_from(["f", "p/f", {"name": "g"}]), max_size=2),
    "instances": st.lists(st.sampled_from(["i-1", {"hostname": "h"}, {"fleet": "f", "instance": 0}]), min_size=1, max_size=2),
    "tags": st.dictionaries(st.sampled_from(["team", "cost-center"]), st.sampled_from(["ml", "a/b"]), max_size=2),
    "backend_options": st.just([{"type": "vastai", "offer_order": "price"}]),
    "backends": st.lists(st.sampled_from(["aws", "gcp", "runpod", "vastai"]), max_size=2, unique=True),
    "regions": st.lists(st.sampled_from(["us-east-1", "eu-west-4"]), max_size=2),
}
# At most a few of the fields at once, so that a fair share of the configurations is valid.
plausible_configs = st.builds(
    lambda fields, commands: {"type": "task", **({"commands": commands} if commands else {}), **fields},
    st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=5, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: PLAUSIBLE[name] for name in names})
    ),
    st.lists(st.sampled_from(["python train.py", "echo ${{ run.args }}"]), max_size=2),
)


def _parse_or_config_error(data):
    try:
        cfg = parse_configuration(data)
    except ConfigurationError as e:
        assert e.issues, "a ConfigurationError names at least one issue"
        assert str(e)
        return None
    assert isinstance(cfg, TaskConfiguration)
    # What parsed must describe itself without failing.
    cfg.model_dump(mode="json")
    cfg.resources.pretty_format()
    assert cfg.nodes_num >= 1
    return cfg


@FUZZ
@given(configs)
@example({"type": "task", "commands": ["x"], "max_duration": float("inf")})
@example({"type": "task", "commands": ["x"], "retry": {"duration": float("-inf")}})
@example({"type": "task", "commands": ["x"], "idle_duration": float("nan")})
@example({"type": "task", "commands": ["x"], "utilization_policy": {"min_gpu_utilization": 1, "time_window": float("inf")}})
@example({"type": "task", "commands": ["x"], "schedule": {"cron": ["0 0 * * 7"]}})
@example({"type": "task", "commands": ["x"], "env": {1: 2}, 3: 4, None: None})
@example({"type": "task", "groups": [{"commands": ["x"]}, {"name": "1"}]})
def test_any_mapping_parses_or_raises_configuration_error(data):
    _parse_or_config_error(data)


@FUZZ
@given(plausible_configs)
def test_plausible_configurations_parse_and_round_trip(data):
    cfg = _parse_or_config_error(data)
    if cfg is None:
        return
    # A parsed configuration dumps to JSON that parses back to the same configuration.
    again = parse_configuration(cfg.model_dump(mode="json"))
    assert again == cfg
    assert [g.name for g in again.node_groups] == [g.name for g in cfg.node_groups]
    assert all(group.nodes >= 1 for group in cfg.node_groups)
    assert cfg.groups is None or cfg.nodes is None


@settings(FUZZ, max_examples=150)
@given(values)
@example([])
@example("type: task")
@example(datetime.date(2026, 1, 1))
def test_any_document_parses_or_raises_configuration_error(data):
    _parse_or_config_error(data)


@settings(FUZZ, max_examples=100)
@given(configs)
def test_any_dumped_yaml_round_trips_through_the_loader(data):
    try:
        text = yaml.safe_dump(data, sort_keys=False)
    except yaml.YAMLError:
        return
    try:
        loaded, positions = read_yaml(text, file="fuzz.dstack.yml")
    except ConfigurationError:
        return
    assert all(isinstance(line, int) and line >= 1 for line in positions.values())
    try:
        parse_configuration(loaded, positions=positions, file="fuzz.dstack.yml")
    except ConfigurationError as e:
        assert str(e).startswith("fuzz.dstack.yml")


YAML_PIECES = [
    "type: task\n", "commands:\n", "  - echo hi\n", "- x\n", "resources:\n", "  gpu: A100:2\n",
    "  cpu: {min: 2}\n", "env:\n", "  - A\n", "  A: 1\n", "groups:\n", "  - name: a\n",
    "    commands: [x]\n", "nodes: 2\n", "ports: [8080, '*:80']\n", "retry: {}\n",
    "schedule: {cron: '0 0 * * 7'}\n", "max_duration: .inf\n", "idle_duration: .nan\n",
    "? [a, b]\n: c\n", "&a x: *a\n", "<<: {a: 1}\n", "!!python/object:os.system x\n",
    "key: !!binary aGk=\n", "date: 2026-01-01\n", "t: 2026-01-01T00:00:00Z\n", "{", "}",
    "[", "]", "\t", ":", " ", "\n", "'", '"', "#", "---\n", "...\n", "%YAML 1.1\n", "|\n", ">-\n",
    "\ufeff", "\x00", "é",
]


@settings(FUZZ, max_examples=200)
@given(st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=6)), max_size=14))
@example(["[" * 2000])
@example(["a: &x [*x]\n"])
def test_any_text_reads_and_parses_or_raises_configuration_error(pieces):
    text = "".join(pieces)
    try:
        data, positions = read_yaml(text, file="t.dstack.yml")
    except ConfigurationError as e:
        assert e.issues
        return
    try:
        parse_configuration(data, positions=positions, file="t.dstack.yml")
    except ConfigurationError:
        pass
