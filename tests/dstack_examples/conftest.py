"""dstack's own documented task examples, run unchanged on the embedded local head as a new user
runs them (`dstack-ray apply -f <example>`), read in place from ../shared/dstack-examples.

The jobs install packages from this machine's own package sources (a `file://` index, given
with `-e` as a user behind a mirror would), so no traffic leaves the machine; the head is
stopped after the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import embedded_head

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "dstack-examples"


@pytest.fixture(scope="package")
def head_env(tmp_path_factory):
    if not EXAMPLES.is_dir():
        pytest.skip(f"dstack's examples are not available at {EXAMPLES} (../shared is absent)")
    yield from embedded_head(tmp_path_factory.mktemp("home"), "examples")


def local_package_sources() -> list:
    """`-e` options that point pip and uv at this machine's `file://` indexes (pip's own
    configuration names them; without these a job's `pip install` would also ask pypi.org)."""
    import configparser

    indexes = []
    for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", str(Path.home() / ".config/pip/pip.conf")):
        config = configparser.ConfigParser()
        try:
            config.read(path)
        except configparser.Error:
            continue
        for key in ("index-url", "extra-index-url"):
            indexes += [i for i in config.get("global", key, fallback="").split() if i.startswith("file://")]
    indexes = list(dict.fromkeys(indexes))
    if not indexes:
        pytest.fail("these examples install packages offline: they need a local `file://` index in pip's configuration")
    first, rest = indexes[0], " ".join(indexes[1:])
    options = ["-e", f"PIP_INDEX_URL={first}", "-e", f"UV_INDEX_URL={first}"]
    if rest:
        options += ["-e", f"PIP_EXTRA_INDEX_URL={rest}", "-e", f"UV_EXTRA_INDEX_URL={rest}"]
    return options


def local_wheel(pattern: str) -> bool:
    """Whether one of the local `file://` indexes holds a wheel named like `pattern`."""
    for option in local_package_sources()[1::2]:
        for url in option.split("=", 1)[1].split():
            root = Path(url[len("file://"):]).parent  # <index>/simple -> <index> (its files/ next to it)
            if any(root.rglob(pattern)):
                return True
    return False
