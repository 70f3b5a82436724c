"""Reading `.dstack.yml` files: YAML with line numbers, readable errors, profiles merged in."""

from __future__ import annotations

import difflib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

from dstack_ray.config.errors import ConfigIssue, ConfigurationError, short_repr
from dstack_ray.config.profiles import PROFILE_FIELDS, Profile, ProfilesConfig
from dstack_ray.config.resources import ResourcesSpec
from dstack_ray.config.task import TaskConfiguration

CONFIG_SUFFIXES = (".dstack.yml", ".dstack.yaml")
OTHER_TYPES = ("dev-environment", "service", "fleet", "gateway", "volume", "preset")
MAX_CONFIG_BYTES = 1 << 20

Path_ = Tuple[Union[str, int], ...]
M = TypeVar("M", bound=BaseModel)


# ---- YAML with positions ------------------------------------------------------------------


def _positions(
    node: yaml.Node, data: Any, path: Path_, out: Dict[Path_, int], seen: Optional[set] = None
) -> None:
    """Record the 1-based line of every key and list item, keyed by its path in `data`.

    A node reached again through an alias (`*name`) is not walked again: that would never end
    for a recursive alias (`a: &x [*x]`) and take exponentially long for nested ones.
    """
    seen = set() if seen is None else seen
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in seen:
            return
        seen.add(id(node))
    if isinstance(node, yaml.MappingNode) and isinstance(data, dict):
        constructor = yaml.SafeLoader("")
        for key_node, value_node in node.value:
            try:
                key = constructor.construct_object(key_node, deep=True)
            except yaml.YAMLError:
                continue
            if not isinstance(key, (str, int)) or key not in data:
                continue
            out[path + (key,)] = key_node.start_mark.line + 1
            _positions(value_node, data[key], path + (key,), out, seen)
    elif isinstance(node, yaml.SequenceNode) and isinstance(data, list):
        for index, (item_node, item) in enumerate(zip(node.value, data)):
            out[path + (index,)] = item_node.start_mark.line + 1
            _positions(item_node, item, path + (index,), out, seen)


MAX_EXPANDED_VALUES = 1_000_000


def _expanded_size(data: Any) -> int:
    """How many values `data` holds when every alias (`*name`) is counted as a copy.

    Shared values are sized once (memoized), so this is linear in the document; a value that
    contains itself (`a: &x [*x]`) counts once.
    """
    sizes: Dict[int, int] = {}
    active: set = set()

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in active:
            return 1
        active.add(key)
        children = list(value.values()) if isinstance(value, dict) else value
        total = 1 + len(value) * isinstance(value, dict) + sum(size(child) for child in children)
        active.discard(key)
        sizes[key] = total
        return total

    return size(data)


def read_yaml(text: str, file: Optional[str] = None) -> Tuple[Any, Dict[Path_, int]]:
    """Parse YAML text; returns the data and a map from field paths to line numbers."""
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigurationError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="check the indentation and quoting around this line",
        ) from None
    except RecursionError:  # PyYAML parses nested collections recursively
        raise ConfigurationError(
            "invalid YAML: the document is nested too deeply", file=file
        ) from None
    # Aliases of aliases make a few lines expand exponentially ("billion laughs"); validating
    # and describing such a value would take minutes and gigabytes.
    if _expanded_size(data) > MAX_EXPANDED_VALUES:
        raise ConfigurationError(
            f"invalid YAML: aliases expand the document to more than {MAX_EXPANDED_VALUES} values",
            file=file,
            hint="use fewer nested aliases (`*name`)",
        )
    positions: Dict[Path_, int] = {}
    if node is not None:
        _positions(node, data, (), positions)
    return data, positions


# ---- pydantic errors -> issues --------------------------------------------------------------

_TYPE_NAMES = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "list_type": "a list",
}


def _walk_loc(error: Dict[str, Any], data: Any) -> Tuple[Path_, Optional[int]]:
    """Follow a pydantic error location through the input data.

    Returns the data path it names and the index in `loc` of the first element that is not a
    place in the data (a union alternative such as `ProfileRetry`, `bool`, `function-after[...]`),
    or None. A missing field's name counts as a place (it has no line of its own).
    """
    loc = tuple(error["loc"])
    path: List[Union[str, int]] = []
    node = data
    for index, elem in enumerate(loc):
        if isinstance(node, dict) and elem in node:
            path.append(elem)
            node = node[elem]
        elif isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node):
            path.append(elem)
            node = node[elem]
        elif error["type"] == "missing" and index == len(loc) - 1:
            return tuple(path) + (elem,), None
        else:
            return tuple(path), index
    return tuple(path), None


def _data_path(error: Dict[str, Any], data: Any) -> Path_:
    """The part of a pydantic error location that names places in the input data."""
    path: Path_ = ()
    loc = tuple(error["loc"])
    while True:  # past each union alternative's name, keep following the places that exist
        found, branch = _walk_loc({**error, "loc": loc}, _at(data, path))
        path += found
        if branch is None:
            return path
        loc = loc[branch + 1 :]


def _at(data: Any, path: Path_) -> Any:
    for elem in path:
        data = data[elem]
    return data


def _union_branch(error: Dict[str, Any], data: Any) -> Optional[Tuple[Path_, int]]:
    """Where a union alternative is named in the error location: (data path, index in loc)."""
    path, branch = _walk_loc(error, data)
    return None if branch is None else (path, branch)


def _best_union_branches(errors: List[Dict[str, Any]], data: Any) -> List[Dict[str, Any]]:
    """Keep, for each value that matched no alternative of a union, the errors of the closest one.

    An alternative is closer the fewer unknown and missing fields it reports; one whose only
    error is "not this type" is farthest. A tie keeps every tied alternative.
    """
    branches: Dict[Path_, Dict[str, List[Dict[str, Any]]]] = {}
    for error in errors:
        found = _union_branch(error, data)
        if found is not None:
            where, index = found
            branches.setdefault(where, {}).setdefault(str(error["loc"][index]), []).append(error)

    def distance(where: Path_, branch: List[Dict[str, Any]]) -> int:
        if all(err["type"] in _TYPE_NAMES and len(err["loc"]) == len(where) + 1 for err in branch):
            return 1_000
        return sum(err["type"] in ("extra_forbidden", "missing") for err in branch)

    dropped: set = set()
    for where, by_branch in branches.items():
        if len(by_branch) < 2:
            continue
        scores = {name: distance(where, branch) for name, branch in by_branch.items()}
        best = min(scores.values())
        for name, branch in by_branch.items():
            if scores[name] > best:
                dropped.update(id(err) for err in branch)
    return [err for err in errors if id(err) not in dropped]


def format_path(path: Path_) -> str:
    text = ""
    for elem in path:
        text += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if text else str(elem))
    return text


def _line_for(path: Path_, positions: Dict[Path_, int]) -> Optional[int]:
    for end in range(len(path), 0, -1):
        if path[:end] in positions:
            return positions[path[:end]]
    return None


def parse_path(text: str) -> Path_:
    """`groups[1].commands[0]` -> ("groups", 1, "commands", 0): the inverse of format_path."""
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", text))


@lru_cache(maxsize=None)
def _all_field_names() -> Tuple[str, ...]:
    names: set[str] = set()

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            for key, value in schema.items():
                if key == "properties" and isinstance(value, dict):
                    names.update(value)
                walk(value)
        elif isinstance(schema, list):
            for item in schema:
                walk(item)

    walk(TaskConfiguration.model_json_schema())
    return tuple(sorted(names))


def _unknown_field_hint(path: Path_) -> str:
    key = str(path[-1])
    if len(path) == 1 and key in ResourcesSpec.model_fields:
        return f"`{key}` belongs under `resources:`; indent it below that key"
    candidates = TaskConfiguration.model_fields if len(path) == 1 else _all_field_names()
    close = difflib.get_close_matches(key, list(candidates), n=1)
    if close and close[0] == key:  # a real field, in a mapping whose other keys rule it out
        return f"`{key}` cannot be combined with the other fields of this mapping"
    if close:
        return f"did you mean `{close[0]}`?"
    return "remove it; see `dstack-ray config schema` for the fields dstack defines"


def _message(error: Dict[str, Any]) -> str:
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message


_HINTS = {
    "Either `commands` or `image` must be set": "add `commands:` with the shell commands to run, or an `image`",
    "mutually exclusive": "keep only one of them",
    "not allowed when `groups` is set": "move it into each entry of `groups`",
}


def _field_named_in(message: str, data: Any) -> Path_:
    """For a whole-configuration error, the top-level field it names (one the file has first)."""
    names = [n for n in re.findall(r"`([a-z_]+)`", message) if n in TaskConfiguration.model_fields]
    present = [n for n in names if isinstance(data, dict) and n in data]
    if present or names:
        return ((present or names)[0],)
    return ()


def _issues_from(
    e: ValidationError, data: Any, positions: Dict[Path_, int], prefix: Path_ = ()
) -> List[ConfigIssue]:
    """Turn pydantic's errors into one readable issue per place, merging union alternatives."""
    by_path: Dict[Path_, List[Dict[str, Any]]] = {}
    for error in _best_union_branches(e.errors(), data):
        path = _data_path(error, data)
        by_path.setdefault(path, []).append(error)
    # An error deeper inside a value explains it better than "expected some other type" at it.
    paths = list(by_path)
    for path in paths:
        if any(other != path and other[: len(path)] == path for other in paths):
            kept = [err for err in by_path[path] if err["type"] not in _TYPE_NAMES]
            if kept:
                by_path[path] = kept
            else:
                del by_path[path]
    issues = []
    for path, errors in by_path.items():
        if not path:
            path = _field_named_in(_message(errors[0]), data)
        full = prefix + path
        line = _line_for(full, positions)
        hint = None
        types = [e for e in errors if e["type"] in _TYPE_NAMES]
        if errors[0]["type"] == "extra_forbidden":
            message = f"unknown field `{path[-1]}`"
            hint = _unknown_field_hint(path)
        elif len(types) == len(errors) and len(errors) > 1:
            expected = sorted({_TYPE_NAMES[e["type"]] for e in errors})
            message = f"invalid value {short_repr(errors[0].get('input'))}; expected {' or '.join(expected)}"
        elif errors[0]["type"] in ("model_type", "dict_type") and errors[0].get("input") is None:
            message = "no value given; write the value after the key or remove the key"
        else:
            message = "; ".join(dict.fromkeys(_message(err) for err in errors))
            hint = next((h for key, h in _HINTS.items() if key in message), None)
            if errors[0]["type"] == "string_type" and isinstance(errors[0].get("input"), dict):
                hint = "YAML read `text: text` here as a mapping; put the whole value in quotes"
            elif errors[0]["type"] == "string_type" and isinstance(errors[0].get("input"), bool):
                hint = "YAML read this as true/false; put it in quotes, e.g. \"true\""
        issues.append(ConfigIssue(message, path=format_path(full), line=line, hint=hint))
    issues.sort(key=lambda issue: (issue.line or 0, issue.path))
    return issues


def validate_model(
    model: Type[M],
    data: Any,
    positions: Optional[Dict[Path_, int]] = None,
    file: Optional[str] = None,
) -> M:
    """`model.model_validate(data)` with ConfigurationError naming fields and lines."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigurationError(_issues_from(e, data, positions or {}), file=file) from None
    except (ValueError, TypeError, RecursionError) as e:  # a validator tripping over odd input
        raise ConfigurationError(f"invalid configuration: {e}", file=file) from None


# ---- task configurations ------------------------------------------------------------------


def parse_configuration(
    data: Any,
    *,
    positions: Optional[Dict[Path_, int]] = None,
    file: Optional[str] = None,
) -> TaskConfiguration:
    """A dict (as read from YAML) -> TaskConfiguration, or ConfigurationError."""
    if data is None:
        raise ConfigurationError(
            "the configuration is empty", file=file, hint="a task needs `type: task` and `commands`"
        )
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"the configuration must be a mapping of fields, not {type(data).__name__}",
            file=file,
            line=1,
        )
    kind = data.get("type")
    line = (positions or {}).get(("type",))
    if kind is None:
        raise ConfigurationError(
            "`type` is required", path="type", file=file, line=line, hint="add `type: task`"
        )
    if kind != "task":
        if kind in OTHER_TYPES:
            message = f"only tasks are supported: dstack-ray runs `type: task`, not `type: {kind}`"
        else:
            message = f"unknown configuration type `{kind}`; dstack-ray runs `type: task`"
        raise ConfigurationError(message, path="type", file=file, line=line)
    cfg = validate_model(TaskConfiguration, data, positions, file)
    cfg.set_source(file, positions or {})
    return cfg


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigurationError(f"configuration file {path} does not exist") from None
    except OSError as e:
        raise ConfigurationError(f"cannot read configuration file {path}: {e.strerror}") from None
    if path.is_dir():
        raise ConfigurationError(f"{path} is a directory; pass the `.dstack.yml` file in it")
    if size > MAX_CONFIG_BYTES:
        raise ConfigurationError(
            f"configuration file {path} is {size} bytes; the limit is {MAX_CONFIG_BYTES}",
            hint="a task configuration is a short YAML file; move data into `files`",
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigurationError(f"cannot read configuration file {path}: {e.strerror}") from None


def load_configuration(
    path: Union[str, os.PathLike],
    *,
    profile: Optional[str] = None,
    no_profile: Optional[bool] = None,
    repo_dir: Optional[Union[str, os.PathLike]] = None,
) -> TaskConfiguration:
    """Read a `.dstack.yml` file and merge in the profile, as `dstack apply` does.

    The profile is `profile`, else $DSTACK_PROFILE, else the one marked `default: true`, read from
    `<repo_dir>/.dstack/profiles.yml` (repo_dir defaults to the current directory) and then
    `~/.dstack/profiles.yml`. `no_profile` (or $DSTACK_NO_PROFILE) skips profiles. Fields set in
    the configuration win over the profile's.
    """
    file = Path(path)
    name = str(path)
    if file.is_dir():
        found = sorted(p.name for p in file.glob("*.dstack.y*ml"))
        raise ConfigurationError(
            f"{name} is a directory; pass the .dstack.yml file in it",
            hint=f"e.g. -f {file / found[0]}" if found else "give the path of a .dstack.yml file",
        )
    if not file.name.endswith(CONFIG_SUFFIXES):
        raise ConfigurationError(
            f"the configuration file name must end with `.dstack.yml` or `.dstack.yaml`: {name}",
            hint=f"rename it, e.g. to `{file.stem.split('.')[0] or 'task'}.dstack.yml`",
        )
    data, positions = read_yaml(_read_text(file), file=name)
    cfg = parse_configuration(data, positions=positions, file=name)
    chosen = select_profile(profile=profile, no_profile=no_profile, repo_dir=repo_dir)
    return merge_profile(cfg, chosen) if chosen is not None else cfg


def merge_profile(cfg: TaskConfiguration, profile: Profile) -> TaskConfiguration:
    """Profile values fill in every profile field the configuration leaves unset."""
    updates = {}
    for field in PROFILE_FIELDS:
        if getattr(cfg, field) is None and getattr(profile, field) is not None:
            updates[field] = getattr(profile, field)
    return cfg.model_copy(update=updates) if updates else cfg


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"${name} must be a boolean (true/false), not `{value}`")


def _load_profiles(path: Path) -> Optional[ProfilesConfig]:
    for candidate in (path, path.with_suffix(".yaml")):
        if candidate.exists():
            data, positions = read_yaml(_read_text(candidate), file=str(candidate))
            return validate_model(ProfilesConfig, data, positions, str(candidate))
    return None


def select_profile(
    *,
    profile: Optional[str] = None,
    no_profile: Optional[bool] = None,
    repo_dir: Optional[Union[str, os.PathLike]] = None,
) -> Optional[Profile]:
    """The profile `dstack apply` would use, or None (precedence: --no-profile > --profile >
    $DSTACK_NO_PROFILE > $DSTACK_PROFILE > `default: true`)."""
    if no_profile:
        return None
    if profile is None:
        if no_profile is None and _env_flag("DSTACK_NO_PROFILE"):
            return None
        profile = os.environ.get("DSTACK_PROFILE") or None
    places = [
        Path(repo_dir or Path.cwd()) / ".dstack" / "profiles.yml",
        Path.home() / ".dstack" / "profiles.yml",
    ]
    for place in places:
        config = _load_profiles(place)
        if config is None:
            continue
        found = config.default() if profile is None else config.get(profile)
        if found is not None:
            return found
    if profile is not None:
        raise ConfigurationError(
            f"No such profile: {profile}", hint=f"define it in {places[0]} or {places[1]}"
        )
    return None

