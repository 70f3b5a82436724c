"""`${{ namespace.name }}` interpolation (with `$${{` as an escape) and groups IP references."""

from __future__ import annotations

import re
import string
from typing import Iterable, Mapping, Optional, Sequence

from dstack_ray.config.errors import ConfigurationError

_OPENING = "${{"
_CLOSING = "}}"
_FIRST_CHARS = set(string.ascii_letters + "_")
_NAME_CHARS = _FIRST_CHARS | set(string.digits + ".")

_GROUPS_IP_NAME = re.compile(r"^groups\[(\d+)\]\.nodes\[(\d+)\]\.IP_ADDRESS$")
_GROUPS_IP_REF = re.compile(r"(?<!\$)\$\{\{\s*groups\[(\d+)\]\.nodes\[(\d+)\]\.IP_ADDRESS\s*\}\}")
_ANY_REF = re.compile(r"(?<!\$)\$\{\{\s*([^}]+?)\s*\}\}")


def _valid_name(name: str) -> bool:
    """`namespace.name`: exactly one dot, both parts start with a letter or `_`."""
    if name.count(".") != 1:
        return False
    dot = name.index(".")
    if not 0 < dot < len(name) - 1:
        return False
    if name[0] not in _FIRST_CHARS or name[dot + 1] not in _FIRST_CHARS:
        return False
    return all(c in _NAME_CHARS for c in name)


def _namespace(name: str) -> str:
    return name.split(".")[0].split("[")[0]


def interpolate(
    text: str,
    namespaces: Mapping[str, Mapping[str, str]],
    skip: Iterable[str] = (),
) -> str:
    """Replace `${{ ns.name }}` with `namespaces[ns][name]`; `$${{` stays a literal `${{`.

    References into a namespace listed in `skip` are left as written (still checked for
    grammar: `groups` refs must be `groups[i].nodes[j].IP_ADDRESS`). Missing variables,
    illegal names and an unclosed `${{` raise ConfigurationError.
    """
    variables = {f"{ns}.{key}": value for ns, values in namespaces.items() for key, value in values.items()}
    skipped = set(skip)
    out: list[str] = []
    missing: list[str] = []
    start = 0
    while start < len(text):
        dollar = text.find("$", start)
        if dollar == -1 or dollar == len(text) - 1:
            out.append(text[start:])
            break
        if text[dollar + 1] == "$":  # `$$` escapes the next `$`
            out.append(text[start : dollar + 1])
            start = dollar + 2
            continue
        opening = text.find(_OPENING, start)
        if opening == -1:
            out.append(text[start:])
            break
        out.append(text[start:opening])
        closing = text.find(_CLOSING, opening)
        if closing == -1:
            raise ConfigurationError(
                f"No pattern closing: {text[opening:]}", hint="close the reference with `}}`"
            )
        name = text[opening + len(_OPENING) : closing].strip()
        namespace = _namespace(name)
        if namespace in skipped:
            valid = _GROUPS_IP_NAME.match(name) if namespace == "groups" else _valid_name(name)
            if not valid:
                raise ConfigurationError(f"Illegal reference name: {name}")
            out.append(text[opening : closing + len(_CLOSING)])
        elif not _valid_name(name):
            raise ConfigurationError(
                f"Illegal reference name: {name}", hint="use `${{ namespace.name }}`, e.g. `${{ run.args }}`"
            )
        elif name in variables:
            out.append(variables[name])
        else:
            missing.append(name)
        start = closing + len(_CLOSING)
    if missing:
        raise ConfigurationError(
            f"Failed to interpolate due to missing vars: {missing}",
            hint="write `$${{` for a literal `${{`",
        )
    return "".join(out)


def groups_ip_refs(text: str) -> list[tuple[int, int]]:
    """(group index, node index) of every `${{ groups[i].nodes[j].IP_ADDRESS }}` in `text`."""
    return [(int(m.group(1)), int(m.group(2))) for m in _GROUPS_IP_REF.finditer(text)]


def check_groups_refs(text: str, group_sizes: Optional[Sequence[int]] = None) -> None:
    """Reject malformed `groups` references and, given group sizes, out-of-range ones."""
    for match in _ANY_REF.finditer(text):
        name = match.group(1).strip()
        if _namespace(name) == "groups" and not _GROUPS_IP_NAME.match(name):
            raise ConfigurationError(
                f"Illegal reference name: {name}",
                hint="the only groups reference is `${{ groups[i].nodes[j].IP_ADDRESS }}`",
            )
    if group_sizes is None:
        return
    for group, node in groups_ip_refs(text):
        if group >= len(group_sizes) or node >= group_sizes[group]:
            raise ConfigurationError(
                f"Invalid reference groups[{group}].nodes[{node}].IP_ADDRESS: out of range"
            )


def contains_groups_ref(text: str) -> bool:
    return any(_namespace(m.group(1).strip()) == "groups" for m in _ANY_REF.finditer(text))


def substitute_groups_ips(text: str, ips: Sequence[Sequence[str]]) -> str:
    """Replace groups IP references with the nodes' IPs (`ips[group][node]`)."""
    check_groups_refs(text, [len(group) for group in ips])

    def replace(match: re.Match) -> str:
        ip = ips[int(match.group(1))][int(match.group(2))]
        if not ip:
            raise ConfigurationError(
                f"IP not available for groups[{match.group(1)}].nodes[{match.group(2)}].IP_ADDRESS"
            )
        return ip

    return _GROUPS_IP_REF.sub(replace, text)
