"""`env`: the mapping and list forms, required (value-less) variables, resolution."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dstack_ray.config import ConfigurationError, Env, EnvSentinel, parse_configuration


def task_env(env) -> dict:
    return {"type": "task", "commands": ["true"], "env": env}


def parsed_env(env) -> dict:
    return dict(parse_configuration(task_env(env)).env.items())


class TestListForm:
    @pytest.mark.parametrize(
        ("items", "expected"),
        [
            (["A=1"], {"A": "1"}),
            (["A=1", "B=2"], {"A": "1", "B": "2"}),
            (["A="], {"A": ""}),
            (["A=x=y"], {"A": "x=y"}),
            (["A= spaced value "], {"A": " spaced value "}),
            (["A=$B"], {"A": "$B"}),
            (["A=${{ run.args }}"], {"A": "${{ run.args }}"}),
            (["_=1"], {"_": "1"}),
            (["_PRIVATE_1=x"], {"_PRIVATE_1": "x"}),
            (["lower_case=x"], {"lower_case": "x"}),
            (["A=\ttab"], {"A": "\ttab"}),
            (["A=é"], {"A": "é"}),
            ([], {}),
        ],
    )
    def test_key_value(self, items, expected):
        assert parsed_env(items) == expected

    def test_bare_key_is_required(self):
        env = parsed_env(["A=1", "HF_TOKEN"])
        assert env["A"] == "1"
        assert env["HF_TOKEN"] == EnvSentinel(key="HF_TOKEN")
        assert str(env["HF_TOKEN"]) == "EnvSentinel(HF_TOKEN)"

    def test_order_is_kept(self):
        assert list(parsed_env(["C=3", "A=1", "B"])) == ["C", "A", "B"]

    @pytest.mark.parametrize(
        ("items", "message"),
        [
            (["A=1", "A=2"], "Duplicate environment variable: A=2"),
            (["A", "A"], "Duplicate environment variable: A"),
            (["A", "A=1"], "Duplicate environment variable: A=1"),
            (["A=1", "A"], "Duplicate environment variable: A"),
        ],
    )
    def test_duplicates(self, items, message):
        with pytest.raises(ConfigurationError, match=message) as info:
            parse_configuration(task_env(items))
        assert [i.path for i in info.value.issues] == ["env"]

    @pytest.mark.parametrize(
        "item",
        [
            "1A=x",  # starts with a digit
            "A B=1",  # space in the key
            "A-B=1",  # dash in the key
            "=x",  # empty key
            "",  # empty item
            " A=1",  # leading space
            "A =1",  # space before =
            "É=1",  # non-ASCII key
            "A=1\nB=2",  # a line break: dstack's pattern has no DOTALL
            "A=1\n",  # a trailing line break (a YAML `- |` block), also rejected by dstack
            "A\n",
        ],
    )
    def test_invalid_items(self, item):
        with pytest.raises(ConfigurationError, match="Invalid environment variable") as info:
            parse_configuration(task_env([item]))
        assert [i.path for i in info.value.issues] == ["env"]

    @pytest.mark.parametrize("item", [1, 1.5, None, True, ["A=1"], {"A": "1"}])
    def test_non_string_items(self, item):
        with pytest.raises(ConfigurationError, match="Invalid environment variable"):
            parse_configuration(task_env(["A=1", item]))

    def test_invalid_item_message_explains_the_grammar(self):
        with pytest.raises(ConfigurationError, match="use KEY=VALUE, or KEY alone"):
            parse_configuration(task_env(["1A"]))


class TestMappingForm:
    @pytest.mark.parametrize(
        ("mapping", "expected"),
        [
            ({"A": "1"}, {"A": "1"}),
            ({"PORT": 8080}, {"PORT": "8080"}),
            ({"RATE": 1.5}, {"RATE": "1.5"}),
            ({"A": ""}, {"A": ""}),
            ({"A": "multi\nline"}, {"A": "multi\nline"}),
            ({}, {}),
        ],
    )
    def test_values(self, mapping, expected):
        assert parsed_env(mapping) == expected

    @pytest.mark.parametrize("key", ["1bad", "", "A-B", "#X", "A B", "A=B"])
    def test_keys_are_validated_like_list_items(self, key):
        """Deviation: dstack leaves mapping keys unchecked; a key no shell can export would be
        dropped or mangled on the node (`#X` vanished from a container's env file)."""
        with pytest.raises(ConfigurationError, match="Invalid environment variable name") as info:
            parse_configuration(task_env({key: "x"}))
        assert info.value.issues[0].path.startswith("env")

    def test_object_value_is_a_sentinel(self):
        assert parsed_env({"A": {"key": "A"}}) == {"A": EnvSentinel(key="A")}

    @pytest.mark.parametrize("value", [True, False, None, [1], {"value": "x"}])
    def test_rejected_values(self, value):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration(task_env({"A": value}))
        assert info.value.issues[0].path.startswith("env")

    def test_null_value_names_the_variable(self):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration(task_env({"GOOD": "1", "BAD": None}))
        assert [i.path for i in info.value.issues] == ["env.BAD"]

    @pytest.mark.parametrize("env", ["A=1", 5, True])
    def test_env_must_be_a_list_or_mapping(self, env):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration(task_env(env))
        assert [i.path for i in info.value.issues] == ["env"]

    def test_null_env(self):
        with pytest.raises(ConfigurationError, match="no value given") as info:
            parse_configuration(task_env(None))
        assert [i.path for i in info.value.issues] == ["env"]

    def test_omitted_env_is_empty(self):
        cfg = parse_configuration({"type": "task", "commands": ["true"]})
        assert len(cfg.env) == 0
        assert cfg.env.as_dict() == {}


class TestEnvModel:
    def test_as_dict(self):
        assert Env.model_validate(["A=1", "B="]).as_dict() == {"A": "1", "B": ""}

    def test_as_dict_names_unresolved_sorted(self):
        env = Env.model_validate(["C", "A=1", "B"])
        with pytest.raises(ConfigurationError) as info:
            env.as_dict()
        (issue,) = info.value.issues
        assert issue.message == "not all variables are resolved: B, C"
        assert issue.path == "env"
        assert "not all variables are resolved: B, C" in str(info.value)
        assert isinstance(info.value, ValueError)

    def test_unresolved(self):
        assert Env.model_validate(["Z", "A=1", "B"]).unresolved() == ["B", "Z"]
        assert Env.model_validate({"A": "1"}).unresolved() == []

    def test_resolve_takes_values_from_environ(self):
        env = Env.model_validate(["A=1", "B", "C"])
        resolved = env.resolve({"B": "from-env", "A": "ignored", "OTHER": "x"})
        assert dict(resolved.items()) == {"A": "1", "B": "from-env", "C": EnvSentinel(key="C")}
        assert resolved.unresolved() == ["C"]
        # The original is unchanged.
        assert env["B"] == EnvSentinel(key="B")

    def test_resolve_then_as_dict(self):
        env = Env.model_validate(["A", "B=2"]).resolve({"A": ""})
        assert env.as_dict() == {"A": "", "B": "2"}

    def test_mapping_protocol(self):
        env = Env.model_validate({"A": "1", "B": "2"})
        assert "A" in env and "Z" not in env
        assert len(env) == 2
        assert list(env) == ["A", "B"]
        assert list(env.keys()) == ["A", "B"]
        assert list(env.values()) == ["1", "2"]
        env["C"] = "3"
        env.update({"A": "10"})
        env.update(Env.model_validate(["D=4"]))
        assert env.as_dict() == {"A": "10", "B": "2", "C": "3", "D": "4"}

    def test_list_and_mapping_forms_are_equal(self):
        assert Env.model_validate(["A=1", "B"]) == Env.model_validate({"A": "1", "B": {"key": "B"}})

    def test_dump_is_a_mapping(self):
        cfg = parse_configuration(task_env(["A=1", "B"]))
        assert cfg.model_dump(mode="json")["env"] == {"A": "1", "B": {"key": "B"}}

    def test_dump_round_trips(self):
        cfg = parse_configuration(task_env(["A=1", "B"]))
        again = parse_configuration(cfg.model_dump(mode="json"))
        assert again.env == cfg.env

    def test_defaults_are_not_shared(self):
        first = parse_configuration({"type": "task", "commands": ["true"]})
        first.env["X"] = "1"
        second = parse_configuration({"type": "task", "commands": ["true"]})
        assert "X" not in second.env

    def test_sentinel_rejects_unknown_fields(self):
        with pytest.raises(ValidationError):
            EnvSentinel.model_validate({"key": "A", "default": "x"})
