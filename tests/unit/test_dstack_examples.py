"""Every task configuration from dstack's documentation is judged exactly as dstack judges it.

The files and dstack's verdicts live in ../shared/dstack-examples (not copied into the project).
"""

import re
from pathlib import Path

import pytest

from dstack_ray.config import ConfigurationError, load_configuration

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "dstack-examples"


def _verdicts() -> dict:
    readme = EXAMPLES / "README.md"
    if not readme.exists():
        return {}
    return dict(re.findall(r"\| (\S+\.dstack\.yml) \| (accepted|rejected) \|", readme.read_text()))


VERDICTS = _verdicts()
pytestmark = pytest.mark.skipif(
    not VERDICTS, reason=f"dstack's examples are not available at {EXAMPLES} (../shared is absent)"
)


def test_all_examples_have_a_verdict():
    files = sorted(p.name for p in EXAMPLES.glob("*.dstack.yml"))
    assert len(files) == 104
    assert sorted(VERDICTS) == files
    assert list(VERDICTS.values()).count("accepted") == 98


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_example_verdict(name):
    path = EXAMPLES / name
    if VERDICTS[name] == "accepted":
        cfg = load_configuration(path, no_profile=True)
        assert cfg.type == "task"
        assert cfg.nodes_num >= 1
    else:
        with pytest.raises(ConfigurationError) as info:
            load_configuration(path, no_profile=True)
        # Every rejection names the file and a field.
        assert str(path) in str(info.value)
        assert info.value.issues and all(issue.path for issue in info.value.issues)


def test_rejections_say_why():
    def error(name):
        with pytest.raises(ConfigurationError) as info:
            load_configuration(EXAMPLES / name, no_profile=True)
        return str(info.value)

    assert "Either `commands` or `image` must be set" in error("033-mkdocs-docs-concepts-backends.dstack.yml")
    slurm = error("086-mkdocs-docs-guides-migration-slurm.dstack.yml")
    assert ":30: gpu: unknown field `gpu`" in slurm
    assert "belongs under `resources:`" in slurm
