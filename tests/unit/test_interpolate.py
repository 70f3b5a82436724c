"""`${{ namespace.name }}` interpolation and the `groups[i].nodes[j].IP_ADDRESS` references.

Cases follow dstack's src/tests/_internal/utils/test_interpolator.py and
test_nodes_interpolator.py (node refs; replica refs are for services, which we do not run).
"""

from __future__ import annotations

import pytest

from dstack_ray.config import ConfigurationError, interpolate, parse_configuration
from dstack_ray.config.checks import check_submittable
from dstack_ray.config.interpolate import (
    check_groups_refs,
    contains_groups_ref,
    groups_ip_refs,
    substitute_groups_ips,
)

NS = {"run": {"args": "qwerty"}}


def interp(text: str) -> str:
    return interpolate(text, NS, skip=("secrets",))


class TestInterpolate:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("", "", id="empty"),
            pytest.param("echo hi", "echo hi", id="plain"),
            pytest.param("${ENV}", "${ENV}", id="bash-braces"),
            pytest.param("$HOME/x", "$HOME/x", id="bash-var"),
            pytest.param("{{ run.args }}", "{{ run.args }}", id="no-dollar"),
            pytest.param("$ {{ run.args }}", "$ {{ run.args }}", id="dollar-space"),
            pytest.param("$", "$", id="lone-dollar"),
            pytest.param("a$", "a$", id="trailing-dollar"),
            pytest.param("$$", "$", id="double-dollar"),
            pytest.param("$$$", "$$", id="triple-dollar"),
            pytest.param("$${{ENV}}", "${{ENV}}", id="escaped"),
            pytest.param("echo $${{ENV}}", "echo ${{ENV}}", id="escaped-middle"),
            pytest.param("$${{ run.args }}", "${{ run.args }}", id="escaped-known-name"),
            pytest.param("$$${{ run.args }}", "$qwerty", id="escaped-dollar-then-reference"),
            pytest.param("${{ run.args }}", "qwerty", id="args"),
            pytest.param("${{run.args}}", "qwerty", id="no-spaces"),
            pytest.param("${{   run.args   }}", "qwerty", id="many-spaces"),
            pytest.param("python train.py ${{ run.args }}", "python train.py qwerty", id="in-command"),
            pytest.param("${{ run.args }}${{ run.args }}", "qwertyqwerty", id="twice"),
            pytest.param("${{ run.args }}}", "qwerty}", id="extra-brace"),
            pytest.param("${{ run.args }} $${{ x }} ${{ run.args }}", "qwerty ${{ x }} qwerty", id="mixed"),
            pytest.param("${{ secrets.password  }}", "${{ secrets.password  }}", id="skipped-namespace"),
            pytest.param("${{ secrets.token }}-${{ run.args }}", "${{ secrets.token }}-qwerty", id="skipped-and-replaced"),
        ],
    )
    def test_interpolates(self, text, expected):
        assert interp(text) == expected

    @pytest.mark.parametrize(
        ("text", "missing"),
        [
            ("${{ env.name }}", "['env.name']"),
            ("${{ env.x }} ${{ env.y }}", "['env.x', 'env.y']"),
            ("${{ run.argz }}", "['run.argz']"),
            ("${{ RUN.ARGS }}", "['RUN.ARGS']"),
            ("${{ _a._b }}", "['_a._b']"),
            ("${{ a.b9 }}", "['a.b9']"),
        ],
    )
    def test_missing(self, text, missing):
        with pytest.raises(ConfigurationError) as info:
            interp(text)
        assert info.value.issues[0].message == f"Failed to interpolate due to missing vars: {missing}"
        assert "$${{" in info.value.issues[0].hint

    @pytest.mark.parametrize(
        ("text", "rest"),
        [("${{ secrets.password }", "${{ secrets.password }"), ("a${{", "${{"), ("${{ run.args }}${{ x", "${{ x")],
    )
    def test_unclosed(self, text, rest):
        with pytest.raises(ConfigurationError) as info:
            interp(text)
        assert info.value.issues[0].message == f"No pattern closing: {rest}"

    @pytest.mark.parametrize(
        ("text", "name"),
        [
            ("${{ secrets.pass-word }}", "secrets.pass-word"),
            ("${{ .password }}", ".password"),
            ("${{ password. }}", "password."),
            ("${{ secrets.password.hash }}", "secrets.password.hash"),
            ("${{ secrets.007 }}", "secrets.007"),
            ("${{ run }}", "run"),
            ("${{}}", ""),
            ("${{ 1a.b }}", "1a.b"),
            ("${{ a.b c }}", "a.b c"),
        ],
    )
    def test_illegal_name(self, text, name):
        with pytest.raises(ConfigurationError) as info:
            interp(text)
        assert info.value.issues[0].message == f"Illegal reference name: {name}"

    def test_no_namespaces(self):
        assert interpolate("echo hi", {}) == "echo hi"
        with pytest.raises(ConfigurationError, match="missing vars"):
            interpolate("${{ run.args }}", {})

    def test_several_namespaces(self):
        namespaces = {"env": {"USER": "alice"}, "run": {"args": "--x 1"}}
        assert interpolate("${{ env.USER }}: ${{ run.args }}", namespaces) == "alice: --x 1"

    def test_value_is_not_reinterpolated(self):
        assert interpolate("${{ run.args }}", {"run": {"args": "${{ run.args }}"}}) == "${{ run.args }}"


class TestGroupsRefsInInterpolation:
    def interp(self, text: str) -> str:
        return interpolate(text, {"run": {"args": "x"}}, skip=("groups",))

    @pytest.mark.parametrize(
        "text",
        [
            "ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379",
            "${{groups[1].nodes[12].IP_ADDRESS}}",
        ],
    )
    def test_left_for_later(self, text):
        assert self.interp(text) == text

    def test_other_refs_still_replaced(self):
        text = "--head ${{ groups[0].nodes[0].IP_ADDRESS }} ${{ run.args }}"
        assert self.interp(text) == "--head ${{ groups[0].nodes[0].IP_ADDRESS }} x"

    @pytest.mark.parametrize(
        "name",
        [
            "groups[0].nodes[0].IP",
            "groups[0].node[0].IP_ADDRESS",
            "groups.prefill.nodes[0].IP_ADDRESS",
            "groups[0].nodes[0].ip_address",
            "groups[a].nodes[0].IP_ADDRESS",
            # Replica refs are for services; dstack rejects them in task commands at submission.
            "groups[0].replicas[0].IP_ADDRESS",
        ],
    )
    def test_invalid_refs(self, name):
        with pytest.raises(ConfigurationError) as info:
            self.interp("${{ %s }}" % name)
        assert info.value.issues[0].message == f"Illegal reference name: {name}"

    def test_not_skipped_is_illegal(self):
        with pytest.raises(ConfigurationError, match="Illegal reference name"):
            interpolate("${{ groups[0].nodes[0].IP_ADDRESS }}", NS)


class TestGroupsIpRefs:
    @pytest.mark.parametrize(
        ("text", "refs"),
        [
            ("ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379", [(0, 0)]),
            ("${{ groups[0].nodes[1].IP_ADDRESS }} ${{groups[2].nodes[0].IP_ADDRESS}}", [(0, 1), (2, 0)]),
            ("echo hello", []),
            ("$${{ groups[0].nodes[0].IP_ADDRESS }}", []),
            ("${{ groups[0].nodes[0].IP }}", []),
            ("${{ groups[0].replicas[0].IP_ADDRESS }}", []),
            ("${{  groups[10].nodes[20].IP_ADDRESS  }}", [(10, 20)]),
        ],
    )
    def test_find(self, text, refs):
        assert groups_ip_refs(text) == refs

    @pytest.mark.parametrize(
        ("text", "found"),
        [
            ("http://${{ groups[1].nodes[0].IP_ADDRESS }}", True),
            ("${{ groups[0].nodes[0].IP }}", True),
            ("${{ groups[0].replicas[0].IP_ADDRESS }}", True),
            ("${{ secrets.token }}", False),
            ("${{ groups_config.x }}", False),
            ("echo $${{ groups[0].nodes[0].IP_ADDRESS }}", False),
            ("groups[0].nodes[0].IP_ADDRESS", False),
        ],
    )
    def test_contains(self, text, found):
        assert contains_groups_ref(text) is found

    @pytest.mark.parametrize(
        "text",
        [
            "ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379",
            "echo $${{ groups[0].bad }}",
            "echo ${{ run.args }}",
            "no refs",
        ],
    )
    def test_check_accepts(self, text):
        check_groups_refs(text)

    @pytest.mark.parametrize(
        "text",
        [
            "${{ groups[0].nodes[0].IP }}",
            "${{ groups[0].node[0].IP_ADDRESS }}",
            "${{ groups.prefill.nodes[0].IP_ADDRESS }}",
            "${{ groups[0].replicas[0].IP_ADDRESS }}",
        ],
    )
    def test_check_rejects(self, text):
        with pytest.raises(ConfigurationError, match="Illegal reference name"):
            check_groups_refs(text)

    @pytest.mark.parametrize(
        ("text", "sizes", "ok"),
        [
            ("${{ groups[0].nodes[0].IP_ADDRESS }}", [1, 2], True),
            ("${{ groups[1].nodes[1].IP_ADDRESS }}", [1, 2], True),
            ("${{ groups[2].nodes[0].IP_ADDRESS }}", [1, 2], False),
            ("${{ groups[0].nodes[1].IP_ADDRESS }}", [1, 2], False),
            ("${{ groups[1].nodes[2].IP_ADDRESS }}", [1, 2], False),
            ("$${{ groups[9].nodes[9].IP_ADDRESS }}", [1], True),
        ],
    )
    def test_bounds(self, text, sizes, ok):
        if ok:
            check_groups_refs(text, sizes)
        else:
            with pytest.raises(ConfigurationError, match="out of range"):
                check_groups_refs(text, sizes)

    def test_bounds_message(self):
        with pytest.raises(ConfigurationError) as info:
            check_groups_refs("${{ groups[2].nodes[0].IP_ADDRESS }}", [1, 2])
        assert info.value.issues[0].message == "Invalid reference groups[2].nodes[0].IP_ADDRESS: out of range"


class TestSubstituteGroupsIps:
    IPS = [["10.0.0.1", "10.0.0.2"], ["10.0.0.3"]]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379", "ray start --address=10.0.0.1:6379"),
            ("${{ groups[1].nodes[0].IP_ADDRESS }}", "10.0.0.3"),
            ("${{groups[0].nodes[1].IP_ADDRESS}}", "10.0.0.2"),
            ("${{ groups[0].nodes[0].IP_ADDRESS }},${{ groups[1].nodes[0].IP_ADDRESS }}", "10.0.0.1,10.0.0.3"),
            ("$${{ groups[0].nodes[0].IP_ADDRESS }}", "$${{ groups[0].nodes[0].IP_ADDRESS }}"),
            ("no refs", "no refs"),
        ],
    )
    def test_replaces(self, text, expected):
        assert substitute_groups_ips(text, self.IPS) == expected

    def test_missing_ip(self):
        with pytest.raises(ConfigurationError, match=r"IP not available for groups\[0\]\.nodes\[0\]\.IP_ADDRESS"):
            substitute_groups_ips("${{ groups[0].nodes[0].IP_ADDRESS }}", [[""]])

    def test_out_of_range(self):
        with pytest.raises(ConfigurationError, match="out of range"):
            substitute_groups_ips("${{ groups[1].nodes[0].IP_ADDRESS }}", [["10.0.0.1"]])

    @pytest.mark.parametrize("name", ["groups[0].nodes[0].IP", "groups[0].replicas[0].IP_ADDRESS"])
    def test_invalid_ref(self, name):
        with pytest.raises(ConfigurationError, match="Illegal reference name"):
            substitute_groups_ips("${{ %s }}" % name, [["10.0.0.1"]])


def group_task(commands, nodes=1, **fields) -> dict:
    return {"type": "task", "image": "debian", "groups": [{"name": "head", "nodes": nodes, "commands": commands}], **fields}


class TestSubmissionChecks:
    """dstack's server checks of groups refs (server/services/runs/spec.py::_validate_groups_ip_refs)."""

    def test_accepts_valid_ref(self):
        check_submittable(parse_configuration(group_task(["echo ${{ groups[0].nodes[0].IP_ADDRESS }}"])))

    @pytest.mark.parametrize(
        ("command", "message"),
        [
            ("echo ${{ groups[0].nodes[0].IP }}", "Illegal reference name: groups[0].nodes[0].IP"),
            ("echo ${{ groups[0].replicas[0].IP_ADDRESS }}", "Illegal reference name"),
            ("echo ${{ groups[1].nodes[0].IP_ADDRESS }}", "Invalid reference groups[1].nodes[0].IP_ADDRESS: out of range"),
            ("echo ${{ groups[0].nodes[1].IP_ADDRESS }}", "Invalid reference groups[0].nodes[1].IP_ADDRESS: out of range"),
        ],
    )
    def test_rejects_in_group_commands(self, command, message):
        with pytest.raises(ConfigurationError) as info:
            check_submittable(parse_configuration(group_task(["true", command])))
        (issue,) = info.value.issues
        assert issue.path == "groups[0].commands[1]"
        assert message in issue.message

    def test_node_index_within_group_size(self):
        check_submittable(parse_configuration(group_task(["echo ${{ groups[0].nodes[1].IP_ADDRESS }}"], nodes=2)))

    def test_top_level_commands_use_nodes_as_group_zero(self):
        cfg = {"type": "task", "nodes": 2, "commands": ["echo ${{ groups[0].nodes[1].IP_ADDRESS }}"]}
        check_submittable(parse_configuration(cfg))
        cfg["commands"] = ["echo ${{ groups[0].nodes[2].IP_ADDRESS }}"]
        with pytest.raises(ConfigurationError) as info:
            check_submittable(parse_configuration(cfg))
        assert [i.path for i in info.value.issues] == ["commands[0]"]

    @pytest.mark.parametrize(
        "value", ["http://${{ groups[1].nodes[0].IP_ADDRESS }}", "${{ groups[0].nodes[0].IP }}"]
    )
    def test_rejects_refs_in_env(self, value):
        cfg = {"type": "task", "image": "debian", "commands": ["echo ok"], "env": {"PREFILL_URL": value}}
        with pytest.raises(ConfigurationError) as info:
            check_submittable(parse_configuration(cfg))
        (issue,) = info.value.issues
        assert issue.path == "env.PREFILL_URL"
        assert issue.message == "groups IP references are only supported in commands, not in `env`"

    def test_escaped_ref_in_env_is_fine(self):
        cfg = {"type": "task", "commands": ["x"], "env": {"A": "$${{ groups[0].nodes[0].IP_ADDRESS }}"}}
        check_submittable(parse_configuration(cfg))

    def test_issue_has_the_yaml_line(self):
        from dstack_ray.config import read_yaml

        text = "type: task\nimage: debian\ngroups:\n  - name: head\n    commands:\n      - echo ok\n      - echo ${{ groups[3].nodes[0].IP_ADDRESS }}\n"
        data, positions = read_yaml(text, "g.dstack.yml")
        cfg = parse_configuration(data, positions=positions, file="g.dstack.yml")
        with pytest.raises(ConfigurationError) as info:
            check_submittable(cfg)
        assert str(info.value).startswith("g.dstack.yml:7: groups[0].commands[1]: Invalid reference")
