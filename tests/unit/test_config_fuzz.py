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
    max_leaves=16,
)
# Every real field is optionally present, with any value; `type: task` most of the time so
# the field validators and the cross-field (model) validators run, not just the type check.
configs = st.builds(
    lambda base, extra: {**extra, **base},
    st.fixed_dictionaries(
        {"type": st.sampled_from(["task", "task", "task", "service", None, 1])},
        optional={name: values for name in TOP_FIELDS if name != "type"},
    ),
    st.dictionaries(keys, values, max_size=3),
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
@given(values)
@example([])
@example("type: task")
@example(datetime.date(2026, 1, 1))
def test_any_document_parses_or_raises_configuration_error(data):
    _parse_or_config_error(data)


@FUZZ
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


@FUZZ
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
