"""Which package may import which (DESIGN.md's layout): the typed models use no Ray and no
other layer, the store does not reach into the runtime, and no two modules import each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parents[2] / "dstack_ray"


def imports() -> Dict[str, Set[str]]:
    """Module -> the dstack_ray and ray modules it imports (at the top or inside functions)."""
    found: Dict[str, Set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(("dstack_ray",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module] = {n for n in names if n.split(".")[0] in ("dstack_ray", "ray")}
    return found


def test_models_use_no_ray_and_no_other_layer():
    for module, names in imports().items():
        if module.startswith("dstack_ray.models"):
            assert not {n for n in names if not n.startswith(("dstack_ray.models", "dstack_ray.config"))}, (module, names)


def test_the_store_does_not_import_the_runtime():
    for module, names in imports().items():
        if module.startswith("dstack_ray.store"):
            assert not {n for n in names if n.startswith("dstack_ray.runtime")}, (module, names)


def test_no_two_modules_import_each_other():
    graph = imports()
    pairs = {tuple(sorted((a, b))) for a, names in graph.items() for b in names if b in graph and a in graph.get(b, set()) and a != b}
    assert not pairs


def test_the_library_has_no_console_markup():
    """Tables, colours and rich markup belong to the CLI (cli/), not to dstack_ray."""
    markup = re.compile(r"\[(?:/|bold|dim|grey\d*|gold\d*|red|green|yellow|cyan|link)[\] =]")
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert "import rich" not in text and "from rich" not in text, path
        assert not markup.search(text), (path, markup.search(text).group(0))


def test_node_side_code_does_not_import_the_head_store():
    """The node agent and what it runs (exec/) work on every node: nothing of the head's store."""
    for module, names in imports().items():
        if module == "dstack_ray.runtime.agent" or module.startswith("dstack_ray.exec"):
            assert not {n for n in names if n.startswith("dstack_ray.store")}, (module, names)


def test_the_configuration_package_gives_every_public_name_whatever_was_imported_first():
    """`dstack_ray.config` loads its names on first use: each is the object DESIGN.md names,
    also after a submodule of the same name was imported."""
    import importlib

    import dstack_ray.config as config
    import dstack_ray.config.interpolate  # noqa: F401  (the submodule named like the function)

    for name in config.__all__:
        value = getattr(config, name)
        assert not isinstance(value, type(importlib)), name
    assert callable(config.interpolate) and issubclass(config.ConfigurationError, ValueError)
