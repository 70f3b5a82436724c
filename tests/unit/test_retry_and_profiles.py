"""Profile fields (ProfileParams) in a task, the effective retry policy, and `profiles.yml`.

Cases follow dstack's core/models/profiles.py, src/tests/_internal/core/models/test_profiles.py,
core/services/profiles.py::get_retry and cli/services/profile.py (profile precedence).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack_ray.config import (
    ConfigurationError,
    Profile,
    ProfileRetry,
    Retry,
    RetryEvent,
    SpotPolicy,
    StartupOrder,
    StopCriteria,
    effective_retry,
    load_configuration,
    merge_profile,
    parse_configuration,
    select_profile,
)
from dstack_ray.config.profiles import (
    CreationPolicy,
    EntityReference,
    FleetInstanceSelector,
    InstanceHostnameSelector,
    InstanceNameSelector,
    ProfilesConfig,
    UtilizationPolicy,
    VastAIProfileOptions,
)

ALL_EVENTS = [RetryEvent.NO_CAPACITY, RetryEvent.INTERRUPTION, RetryEvent.ERROR]


def task(**fields) -> dict:
    return {"type": "task", "commands": ["true"], **fields}


def parse(**fields):
    return parse_configuration(task(**fields))


def error_of(**fields) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        parse(**fields)
    return info.value


# ---- retry --------------------------------------------------------------------------------


class TestRetry:
    @pytest.mark.parametrize(
        ("retry", "events", "duration"),
        [
            pytest.param(True, ALL_EVENTS, 3600, id="true"),
            pytest.param({}, ALL_EVENTS, 3600, id="empty-object-equals-true"),
            pytest.param({"duration": "2h"}, ALL_EVENTS, 7200, id="duration-only"),
            pytest.param({"duration": 600}, ALL_EVENTS, 600, id="duration-seconds"),
            pytest.param({"on_events": ["error"]}, [RetryEvent.ERROR], 3600, id="events-only"),
            pytest.param(
                {"on_events": ["no-capacity", "interruption"], "duration": "1d"},
                [RetryEvent.NO_CAPACITY, RetryEvent.INTERRUPTION],
                86400,
                id="both",
            ),
            pytest.param({"duration": -1}, ALL_EVENTS, -1, id="negative-parses"),
        ],
    )
    def test_effective(self, retry, events, duration):
        assert effective_retry(parse(retry=retry)) == Retry(on_events=events, duration=duration)

    @pytest.mark.parametrize("retry", [False, None])
    def test_no_retry(self, retry):
        assert effective_retry(parse(retry=retry)) is None

    def test_omitted(self):
        cfg = parse_configuration(task())
        assert cfg.retry is None
        assert effective_retry(cfg) is None

    @pytest.mark.parametrize(("raw", "value"), [("yes", True), ("no", False), (1, True), (0, False), ("true", True)])
    def test_bool_coercion(self, raw, value):
        # pydantic's lax bool, as dstack parses it.
        assert parse(retry=raw).retry is value

    @pytest.mark.parametrize(
        ("retry", "path", "message"),
        [
            ({"on_events": []}, "retry", "`on_events` cannot be empty"),
            ({"on_events": ["bad"]}, "retry.on_events[0]", "Input should be 'no-capacity', 'interruption' or 'error'"),
            ({"on_events": "error"}, "retry.on_events", ""),
            ({"duration": "1x"}, "retry.duration", "Cannot parse the duration 1x"),
            ({"duration": "1h30m"}, "retry.duration", "Cannot parse the duration 1h30m"),
            ({"attempts": 3}, "retry.attempts", "unknown field `attempts`"),
            ("always", "retry", ""),
        ],
    )
    def test_invalid(self, retry, path, message):
        error = error_of(retry=retry)
        assert path in [i.path for i in error.issues]
        assert message in str(error)

    @pytest.mark.parametrize(
        ("retry", "text"),
        [
            (Retry(on_events=ALL_EVENTS, duration=3600), "1h[no-capacity, interruption, error]"),
            (Retry(on_events=[RetryEvent.ERROR], duration=5400), "90m[error]"),
            (Retry(on_events=[RetryEvent.NO_CAPACITY, RetryEvent.INTERRUPTION], duration=86400), "1d[no-capacity, interruption]"),
            (Retry(on_events=[RetryEvent.INTERRUPTION], duration=90), "90s[interruption]"),
            (Retry(on_events=[RetryEvent.ERROR], duration=0), "0s[error]"),
        ],
    )
    def test_pretty_format(self, retry, text):
        assert retry.pretty_format() == text

    def test_pretty_format_of_true(self):
        assert effective_retry(parse(retry=True)).pretty_format() == "1h[no-capacity, interruption, error]"

    def test_profile_retry_model(self):
        assert ProfileRetry().on_events is None and ProfileRetry().duration is None
        with pytest.raises(ValueError, match="`on_events` cannot be empty"):
            ProfileRetry(on_events=[])


# ---- other profile fields ------------------------------------------------------------------


class TestSimpleFields:
    @pytest.mark.parametrize(
        ("field", "raw", "value"),
        [
            ("spot_policy", "spot", SpotPolicy.SPOT),
            ("spot_policy", "on-demand", SpotPolicy.ONDEMAND),
            ("spot_policy", "auto", SpotPolicy.AUTO),
            ("creation_policy", "reuse", CreationPolicy.REUSE),
            ("creation_policy", "reuse-or-create", CreationPolicy.REUSE_OR_CREATE),
            ("startup_order", "any", StartupOrder.ANY),
            ("startup_order", "master-first", StartupOrder.MASTER_FIRST),
            ("startup_order", "workers-first", StartupOrder.WORKERS_FIRST),
            ("stop_criteria", "all-done", StopCriteria.ALL_DONE),
            ("stop_criteria", "master-done", StopCriteria.MASTER_DONE),
            ("max_price", 0.5, 0.5),
            ("max_price", "1.25", 1.25),
            ("max_price", 3, 3.0),
            ("backends", ["aws", "gcp"], ["aws", "gcp"]),
            ("backends", ["vastai", "runpod", "kubernetes", "remote"], ["vastai", "runpod", "kubernetes", "remote"]),
            ("regions", ["eu-west-1", "us-west4"], ["eu-west-1", "us-west4"]),
            ("availability_zones", ["eu-west-1a"], ["eu-west-1a"]),
            ("instance_types", ["g6e.24xlarge"], ["g6e.24xlarge"]),
            ("reservation", "cr-123", "cr-123"),
            ("reservation", 5, "5"),
            ("tags", {"team": "ml", "cost-center": "a/b:c=d@e+f g.h"}, {"team": "ml", "cost-center": "a/b:c=d@e+f g.h"}),
            ("tags", {"k": ""}, {"k": ""}),
            ("tags", {"k" * 60: "v" * 256}, {"k" * 60: "v" * 256}),
        ],
    )
    def test_valid(self, field, raw, value):
        assert getattr(parse(**{field: raw}), field) == value

    @pytest.mark.parametrize(
        "field",
        [
            "backends", "regions", "availability_zones", "instance_types", "reservation", "spot_policy",
            "retry", "max_duration", "stop_duration", "max_price", "creation_policy", "idle_duration",
            "utilization_policy", "startup_order", "stop_criteria", "schedule", "fleets", "instances",
            "tags", "backend_options",
        ],
    )
    def test_default_is_unset(self, field):
        assert getattr(parse_configuration(task()), field) is None

    @pytest.mark.parametrize(
        ("field", "raw", "message"),
        [
            ("spot_policy", "ondemand", "Input should be 'spot', 'on-demand' or 'auto'"),
            ("spot_policy", "SPOT", "Input should be 'spot', 'on-demand' or 'auto'"),
            ("creation_policy", "create", "Input should be 'reuse' or 'reuse-or-create'"),
            ("startup_order", "first", "Input should be 'any', 'master-first' or 'workers-first'"),
            ("stop_criteria", "done", "Input should be 'all-done' or 'master-done'"),
            ("max_price", 0, "Input should be greater than 0"),
            ("max_price", -1, "Input should be greater than 0"),
            ("max_price", "cheap", "Input should be a valid number"),
            ("backends", ["nope"], "Input should be"),
            ("backends", ["local"], "Input should be"),
            ("backends", "aws", "Input should be a valid list"),
            ("regions", "eu-west-1", "Input should be a valid list"),
            ("tags", {"a b": "x"}, "Invalid tag key a b. The key must match regex '^[_\\-a-zA-Z0-9]{1,60}$'"),
            ("tags", {"": "x"}, "Invalid tag key . The key must match regex"),
            ("tags", {"k" * 61: "x"}, "Invalid tag key"),
            ("tags", {"a": "é"}, "Invalid tag value é. The value must match regex '^[a-zA-Z0-9 .:/=_\\-+@]{0,256}$'"),
            ("tags", {"a": "!"}, "Invalid tag value !"),
            ("tags", {"a": "v" * 257}, "Invalid tag value"),
            ("tags", "x", "Input should be a valid dictionary"),
        ],
    )
    def test_invalid(self, field, raw, message):
        error = error_of(**{field: raw})
        assert message in str(error)
        assert all(i.path.split("[")[0].split(".")[0] == field for i in error.issues)


class TestMaxDurationVariants:
    @pytest.mark.parametrize(
        ("raw", "value"),
        [("off", "off"), (False, "off"), (True, None), (None, None), ("2h", 7200), (0, 0)],
    )
    def test_max_duration(self, raw, value):
        assert parse(max_duration=raw).max_duration == value

    @pytest.mark.parametrize("raw", [-1, "-30", -3600])
    def test_negative_max_duration(self, raw):
        assert "Duration cannot be negative" in str(error_of(max_duration=raw))

    @pytest.mark.parametrize(("raw", "value"), [("off", "off"), (True, None), ("30s", 30)])
    def test_stop_duration(self, raw, value):
        assert parse(stop_duration=raw).stop_duration == value

    @pytest.mark.parametrize(("raw", "value"), [("off", -1), (False, -1), (-1, -1), (True, None), ("3d", 259200)])
    def test_idle_duration(self, raw, value):
        assert parse(idle_duration=raw).idle_duration == value


class TestUtilizationPolicy:
    @pytest.mark.parametrize(
        ("policy", "minimum", "window"),
        [
            ({"min_gpu_utilization": 10, "time_window": "5m"}, 10, 300),
            ({"min_gpu_utilization": 0, "time_window": 300}, 0, 300),
            ({"min_gpu_utilization": 100, "time_window": "1h"}, 100, 3600),
            ({"min_gpu_utilization": "50", "time_window": "2d"}, 50, 172800),
        ],
    )
    def test_valid(self, policy, minimum, window):
        parsed = parse(utilization_policy=policy).utilization_policy
        assert parsed == UtilizationPolicy(min_gpu_utilization=minimum, time_window=window)

    @pytest.mark.parametrize(
        ("policy", "path", "message"),
        [
            ({"min_gpu_utilization": 10, "time_window": "4m"}, "utilization_policy.time_window", "Minimum time_window is 5m"),
            ({"min_gpu_utilization": 10, "time_window": 299}, "utilization_policy.time_window", "Minimum time_window is 5m"),
            ({"min_gpu_utilization": 10, "time_window": "1x"}, "utilization_policy.time_window", "Cannot parse the duration 1x"),
            ({"min_gpu_utilization": 101, "time_window": "1h"}, "utilization_policy.min_gpu_utilization", "Input should be less than or equal to 100"),
            ({"min_gpu_utilization": -1, "time_window": "1h"}, "utilization_policy.min_gpu_utilization", "Input should be greater than or equal to 0"),
            ({"min_gpu_utilization": 10}, "utilization_policy.time_window", "Field required"),
            ({"time_window": "1h"}, "utilization_policy.min_gpu_utilization", "Field required"),
            ({"min_gpu_utilization": 5, "time_window": "1h", "metric": "x"}, "utilization_policy.metric", "unknown field `metric`"),
        ],
    )
    def test_invalid(self, policy, path, message):
        error = error_of(utilization_policy=policy)
        assert [i.path for i in error.issues] == [path]
        assert message in error.issues[0].message


class TestFleetsAndInstances:
    @pytest.mark.parametrize(
        ("fleet", "reference"),
        [
            ("my-fleet", EntityReference(name="my-fleet")),
            ("other/my-fleet", EntityReference(project="other", name="my-fleet")),
            ({"name": "f"}, EntityReference(name="f")),
            ({"project": "p", "name": "f"}, EntityReference(project="p", name="f")),
        ],
    )
    def test_fleets(self, fleet, reference):
        assert parse(fleets=[fleet]).fleets == [reference]

    @pytest.mark.parametrize("fleet", ["", "/a", "a/", "p/a/b", "a//b"])
    def test_invalid_fleet_reference(self, fleet):
        error = error_of(fleets=[fleet])
        assert error.issues[0].message == "Invalid entity reference. Only `<name>` or `<project>/<name>` formats are allowed"
        assert error.issues[0].path == "fleets[0]"

    def test_fleet_reference_needs_a_name(self):
        assert "fleets[0].name" in [i.path for i in error_of(fleets=[{"project": "p"}]).issues]

    def test_instance_string_is_a_name_selector(self):
        assert parse(instances=["my-fleet-1"]).instances == [InstanceNameSelector(name="my-fleet-1")]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({"name": "my-fleet-1"}, InstanceNameSelector(name="my-fleet-1")),
            ({"hostname": "worker-1"}, InstanceHostnameSelector(hostname="worker-1")),
            ({"fleet": "my-fleet", "instance": 3}, FleetInstanceSelector(fleet=EntityReference(name="my-fleet"), instance=3)),
            (
                {"fleet": "other-project/my-fleet", "instance": 0},
                FleetInstanceSelector(fleet=EntityReference(project="other-project", name="my-fleet"), instance=0),
            ),
            (
                {"fleet": {"project": "main", "name": "my-fleet"}, "instance": 0},
                FleetInstanceSelector(fleet=EntityReference(project="main", name="my-fleet"), instance=0),
            ),
        ],
    )
    def test_object_selectors(self, value, expected):
        assert parse(instances=[value]).instances == [expected]

    @pytest.mark.parametrize(
        "value",
        [
            "",
            {"name": "my-fleet-1", "hostname": "worker-1"},
            {"name": ""},
            {"hostname": ""},
            {"fleet": "", "instance": 0},
            {"fleet": "project/name/extra", "instance": 0},
            {"fleet": "my-fleet"},
            {"fleet": "my-fleet", "instance": -1},
            {"hostname": "worker-1", "extra": "value"},
            5,
        ],
    )
    def test_invalid_selector(self, value):
        error = error_of(instances=[value])
        assert all(i.path.startswith("instances[0]") for i in error.issues)

    def test_empty_instances_list(self):
        error = error_of(instances=[])
        assert [i.path for i in error.issues] == ["instances"]
        assert "at least 1 item" in error.issues[0].message


class TestBackendOptions:
    def test_duplicate_backend(self):
        error = error_of(backend_options=[{"type": "vastai", "min_score": 100}, {"type": "vastai", "min_score": 200}])
        assert error.issues[0].message == "backend_options contains duplicate entry for backend 'vastai'"

    def test_duplicate_with_the_defaulted_type(self):
        assert "duplicate entry" in str(error_of(backend_options=[{}, {"min_score": 1}]))

    @pytest.mark.parametrize(
        "options",
        [
            [],
            [{"type": "vastai"}],
            [{"min_score": 100}],
            [{"type": "vastai", "offer_order": "price", "min_reliability": 0.95, "min_score": 0}],
        ],
    )
    def test_valid(self, options):
        assert len(parse(backend_options=options).backend_options) == len(options)

    def test_model_defaults(self):
        assert VastAIProfileOptions().type == "vastai"
        assert Profile(backend_options=None).backend_options is None

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ([{"type": "aws"}], "Input should be 'vastai'"),
            ([{"offer_order": "random"}], "Input should be 'score' or 'price'"),
            ([{"min_reliability": 2}], "less than or equal to 1"),
            ([{"min_reliability": -0.1}], "greater than or equal to 0"),
            ([{"min_score": -1}], "greater than or equal to 0"),
            ([{"gpu_type": "x"}], "unknown field `gpu_type`"),
        ],
    )
    def test_invalid(self, options, message):
        assert message in str(error_of(backend_options=options))


class TestPriority:
    @pytest.mark.parametrize("priority", [0, 1, 50, 100, "7"])
    def test_range(self, priority):
        assert parse(priority=priority).priority == int(priority)

    def test_default_is_unset(self):
        assert parse_configuration(task()).priority is None

    @pytest.mark.parametrize(
        ("priority", "message"),
        [
            (101, "Input should be less than or equal to 100"),
            (-1, "Input should be greater than or equal to 0"),
            (1.5, "Input should be a valid integer"),
            ("high", "Input should be a valid integer"),
        ],
    )
    def test_invalid(self, priority, message):
        error = error_of(priority=priority)
        assert [(i.path, i.message.startswith(message)) for i in error.issues] == [("priority", True)]


# ---- profiles.yml --------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty home directory, no profile variables, and a fresh working directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DSTACK_PROFILE", raising=False)
    monkeypatch.delenv("DSTACK_NO_PROFILE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def repo_profiles(repo: Path, text: str) -> Path:
    return write(repo / ".dstack" / "profiles.yml", text)


def global_profiles(home: Path, text: str) -> Path:
    return write(home / ".dstack" / "profiles.yml", text)


def config_file(directory: Path, text: str = "type: task\ncommands: [echo hi]\n") -> Path:
    return write(directory / "task.dstack.yml", text)


PROFILES = """\
profiles:
  - name: cheap
    spot_policy: spot
    max_price: 0.5
    retry: true
  - name: big
    default: true
    backends: [aws]
    max_duration: 2h
    idle_duration: off
"""


class TestProfiles:
    def test_no_profiles_anywhere(self, home, tmp_path):
        cfg = load_configuration(config_file(tmp_path / "work"))
        assert cfg.spot_policy is None and cfg.backends is None

    def test_default_profile_from_repo(self, home, tmp_path):
        repo = tmp_path / "work"
        repo_profiles(repo, PROFILES)
        cfg = load_configuration(config_file(repo))
        assert cfg.backends == ["aws"]
        assert cfg.max_duration == 7200
        assert cfg.idle_duration == -1
        assert cfg.spot_policy is None

    def test_named_profile(self, home, tmp_path):
        repo = tmp_path / "work"
        repo_profiles(repo, PROFILES)
        cfg = load_configuration(config_file(repo), profile="cheap")
        assert cfg.spot_policy == SpotPolicy.SPOT
        assert cfg.max_price == 0.5
        assert effective_retry(cfg) == Retry(on_events=ALL_EVENTS, duration=3600)
        assert cfg.backends is None  # the default profile is not merged in as well

    def test_configuration_wins_over_profile(self, home, tmp_path):
        repo = tmp_path / "work"
        repo_profiles(repo, PROFILES)
        path = config_file(repo, "type: task\ncommands: [x]\nspot_policy: on-demand\nretry: false\nmax_price: 2\n")
        cfg = load_configuration(path, profile="cheap")
        assert cfg.spot_policy == SpotPolicy.ONDEMAND
        assert cfg.retry is False
        assert effective_retry(cfg) is None
        assert cfg.max_price == 2.0

    def test_no_profile(self, home, tmp_path):
        repo = tmp_path / "work"
        repo_profiles(repo, PROFILES)
        assert load_configuration(config_file(repo), no_profile=True).backends is None

    def test_repo_dir_argument(self, home, tmp_path):
        repo = tmp_path / "elsewhere"
        repo_profiles(repo, PROFILES)
        path = config_file(tmp_path / "work")
        assert load_configuration(path).backends is None  # cwd has no profiles
        assert load_configuration(path, repo_dir=repo).backends == ["aws"]

    def test_global_profiles(self, home, tmp_path):
        global_profiles(home, "profiles:\n  - name: g\n    default: true\n    regions: [us-east-1]\n")
        assert load_configuration(config_file(tmp_path / "work")).regions == ["us-east-1"]

    def test_repo_profile_before_global(self, home, tmp_path):
        repo = tmp_path / "work"
        global_profiles(home, "profiles:\n  - name: p\n    default: true\n    regions: [global]\n")
        repo_profiles(repo, "profiles:\n  - name: p\n    default: true\n    regions: [repo]\n")
        assert load_configuration(config_file(repo)).regions == ["repo"]
        assert load_configuration(config_file(repo), profile="p").regions == ["repo"]

    def test_named_profile_found_in_global_only(self, home, tmp_path):
        repo = tmp_path / "work"
        repo_profiles(repo, PROFILES)
        global_profiles(home, "profiles:\n  - name: gpu\n    backends: [gcp]\n")
        assert load_configuration(config_file(repo), profile="gpu").backends == ["gcp"]

    def test_default_found_in_global_when_repo_has_none(self, home, tmp_path):
        repo = tmp_path / "work"
        repo_profiles(repo, "profiles:\n  - name: a\n    regions: [repo]\n")
        global_profiles(home, "profiles:\n  - name: b\n    default: true\n    regions: [global]\n")
        assert load_configuration(config_file(repo)).regions == ["global"]

    def test_yaml_suffix_is_read_too(self, home, tmp_path):
        repo = tmp_path / "work"
        write(repo / ".dstack" / "profiles.yaml", "profiles:\n  - name: y\n    default: true\n    regions: [yaml]\n")
        assert load_configuration(config_file(repo)).regions == ["yaml"]

    def test_unknown_profile(self, home, tmp_path):
        with pytest.raises(ConfigurationError, match="No such profile: nope"):
            load_configuration(config_file(tmp_path / "work"), profile="nope")

    def test_invalid_profiles_file_names_file_and_line(self, home, tmp_path):
        repo = tmp_path / "work"
        path = repo_profiles(repo, "profiles:\n  - name: a\n    default: true\n    spot_policy: sometimes\n")
        with pytest.raises(ConfigurationError) as info:
            load_configuration(config_file(repo))
        assert str(info.value).startswith(f"{path}:4: profiles[0].spot_policy: Input should be")

    @pytest.mark.parametrize(
        "text",
        ["profiles:\n  - name: a\n    commands: [x]\n", "[]\n", "", "profiles: [\n"],
    )
    def test_broken_profiles_file(self, home, tmp_path, text):
        repo = tmp_path / "work"
        path = repo_profiles(repo, text)
        with pytest.raises(ConfigurationError) as info:
            load_configuration(config_file(repo))
        assert str(path) in str(info.value)

    def test_profile_fields_are_profile_params_only(self):
        with pytest.raises(ValueError):
            ProfilesConfig.model_validate({"profiles": [{"name": "a", "image": "ubuntu"}]})

    def test_utilization_policy_comes_from_profile(self, home, tmp_path):
        # dstack issue #2383: a utilization_policy set in profiles.yml must apply.
        repo = tmp_path / "work"
        repo_profiles(repo, "profiles:\n  - name: u\n    default: true\n    utilization_policy: {min_gpu_utilization: 5, time_window: 10m}\n")
        cfg = load_configuration(config_file(repo))
        assert cfg.utilization_policy == UtilizationPolicy(min_gpu_utilization=5, time_window=600)


class TestProfilePrecedence:
    """--no-profile > --profile > DSTACK_NO_PROFILE > DSTACK_PROFILE > `default: true`."""

    @pytest.fixture
    def repo(self, home, tmp_path) -> Path:
        repo = tmp_path / "work"
        repo_profiles(repo, PROFILES)
        return repo

    @pytest.mark.parametrize(
        ("env", "kwargs", "expected"),
        [
            ({}, {}, "big"),
            ({}, {"profile": "cheap"}, "cheap"),
            ({}, {"no_profile": True}, None),
            ({}, {"no_profile": True, "profile": "cheap"}, None),
            ({"DSTACK_PROFILE": "cheap"}, {}, "cheap"),
            # An empty DSTACK_PROFILE counts as unset here (dstack would look up a profile named "").
            ({"DSTACK_PROFILE": ""}, {}, "big"),
            ({"DSTACK_NO_PROFILE": "1"}, {}, None),
            ({"DSTACK_NO_PROFILE": "true"}, {}, None),
            ({"DSTACK_NO_PROFILE": "0"}, {}, "big"),
            ({"DSTACK_NO_PROFILE": "false"}, {}, "big"),
            ({"DSTACK_NO_PROFILE": "1", "DSTACK_PROFILE": "cheap"}, {}, None),
            ({"DSTACK_NO_PROFILE": "1"}, {"profile": "cheap"}, "cheap"),
            ({"DSTACK_PROFILE": "cheap"}, {"profile": "big"}, "big"),
            ({"DSTACK_PROFILE": "cheap"}, {"no_profile": True}, None),
            ({"DSTACK_NO_PROFILE": "1"}, {"no_profile": False}, "big"),
        ],
    )
    def test_precedence(self, repo, monkeypatch, env, kwargs, expected):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        chosen = select_profile(repo_dir=repo, **kwargs)
        assert (chosen.name if chosen else None) == expected

    def test_bad_no_profile_variable(self, repo, monkeypatch):
        monkeypatch.setenv("DSTACK_NO_PROFILE", "maybe")
        with pytest.raises(ConfigurationError, match="DSTACK_NO_PROFILE must be a boolean"):
            select_profile(repo_dir=repo)

    def test_unknown_profile_from_environment(self, repo, monkeypatch):
        monkeypatch.setenv("DSTACK_PROFILE", "nope")
        with pytest.raises(ConfigurationError, match="No such profile: nope"):
            select_profile(repo_dir=repo)


class TestMergeProfile:
    def test_profile_fills_unset_fields(self):
        cfg = parse(spot_policy="spot")
        profile = Profile(name="p", spot_policy="on-demand", max_price=1.0, regions=["r"], retry=True)
        merged = merge_profile(cfg, profile)
        assert merged.spot_policy == SpotPolicy.SPOT
        assert merged.max_price == 1.0
        assert merged.regions == ["r"]
        assert merged.retry is True
        assert cfg.max_price is None  # the original is not changed

    def test_false_and_zero_in_the_configuration_win(self):
        cfg = parse(retry=False, max_duration="off", idle_duration=0)
        merged = merge_profile(cfg, Profile(retry=True, max_duration=3600, idle_duration=600))
        assert (merged.retry, merged.max_duration, merged.idle_duration) == (False, "off", 0)

    def test_non_profile_fields_untouched(self):
        cfg = parse(image="ubuntu", commands=["a"])
        merged = merge_profile(cfg, Profile(name="p", default=True))
        assert merged.image == "ubuntu" and merged.commands == ["a"]
        assert merged == cfg
