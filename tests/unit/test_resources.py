"""The `resources` grammar: ranges, memory units, cpu/gpu/disk shorthands, defaults, display.

Cases follow dstack's src/tests/_internal/core/models/test_resources.py and the
pretty_resources cases of src/tests/_internal/utils/test_common.py, adapted to our API.
"""

from __future__ import annotations

import logging

import pytest
from pydantic import TypeAdapter, ValidationError

from dstack_ray.config import ConfigurationError, GPUSpec, Memory, Range, ResourcesSpec, parse_configuration
from dstack_ray.config.gpus import AcceleratorVendor, CPUArchitecture
from dstack_ray.config.resources import (
    DEFAULT_CPU_COUNT,
    DEFAULT_DISK,
    DEFAULT_GPU,
    DEFAULT_GPU_COUNT,
    DEFAULT_MEMORY_SIZE,
    ComputeCapability,
    CPUSpec,
    DiskSpec,
)

NVIDIA, AMD, GOOGLE = AcceleratorVendor.NVIDIA, AcceleratorVendor.AMD, AcceleratorVendor.GOOGLE
INTEL, TENSTORRENT = AcceleratorVendor.INTEL, AcceleratorVendor.TENSTORRENT


def rng(lo, hi):
    return {"min": lo, "max": hi}


def task_with_resources(resources) -> dict:
    return {"type": "task", "commands": ["true"], "resources": resources}


# ---- Range[int] ---------------------------------------------------------------------------


class TestIntRange:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(1, rng(1, 1), id="int"),
            pytest.param(0, rng(0, 0), id="zero"),
            pytest.param("1", rng(1, 1), id="str"),
            pytest.param("1..", rng(1, None), id="from"),
            pytest.param("..1", rng(None, 1), id="to"),
            pytest.param("1..3", rng(1, 3), id="closed"),
            pytest.param("2..2", rng(2, 2), id="point"),
            pytest.param(" 1 .. 3 ", rng(1, 3), id="spaces-removed"),
            pytest.param({"min": 1, "max": 3}, rng(1, 3), id="dict"),
            pytest.param({"min": 1}, rng(1, None), id="dict-min-only"),
            pytest.param({"max": 3}, rng(None, 3), id="dict-max-only"),
            pytest.param({"min": "2", "max": "4"}, rng(2, 4), id="dict-of-strings"),
        ],
    )
    def test_valid(self, value, expected):
        assert Range[int].model_validate(value).model_dump() == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            pytest.param("..", "Invalid empty range: ..", id="empty"),
            pytest.param({}, "Invalid empty range: ..", id="empty-dict"),
            pytest.param({"min": None, "max": None}, "Invalid empty range: ..", id="none-dict"),
            pytest.param("3..1", "Invalid range order: 3..1", id="unordered"),
            pytest.param({"min": 3, "max": 1}, "Invalid range order: 3..1", id="unordered-dict"),
            pytest.param("1...3", "valid integer", id="typo-three-dots"),
            pytest.param("...", "valid integer", id="three-dots"),
            pytest.param("a", "valid integer", id="letters"),
            pytest.param(1.5, "fractional part", id="fraction"),
            pytest.param([1, 2], "valid dictionary", id="list"),
            pytest.param(None, "valid dictionary", id="null"),
            pytest.param({"min": 1, "step": 2}, "Extra inputs are not permitted", id="unknown-key"),
            # Deviation from dstack (it accepts these): a negative or absurd amount is a typo, and
            # one run with `cpu: <400 digits>` made every admission pass overflow.
            pytest.param("-1", "use a number from 0 to 1e\\+09", id="negative"),
            pytest.param("1..-1", "use a number from 0 to 1e\\+09", id="negative-end"),
            pytest.param("9" * 400, "use a number from 0 to 1e\\+09", id="400-digits"),
            pytest.param(10**10, "use a number from 0 to 1e\\+09", id="too-large"),
        ],
    )
    def test_invalid(self, value, message):
        with pytest.raises(ValidationError, match=message):
            Range[int].model_validate(value)

    @pytest.mark.parametrize(
        ("value", "text"),
        [(1, "1"), ("1..", "1.."), ("..4", "..4"), ("2..8", "2..8"), ("3..3", "3")],
    )
    def test_str(self, value, text):
        assert str(Range[int].model_validate(value)) == text

    @pytest.mark.parametrize(
        ("value", "inside", "outside"),
        [("2..4", [2, 3, 4], [1, 5]), ("2..", [2, 1000], [1]), ("..4", [-5, 4], [5]), (3, [3], [2, 4])],
    )
    def test_contains(self, value, inside, outside):
        r = Range[int].model_validate(value)
        assert all(r.contains(v) for v in inside)
        assert not any(r.contains(v) for v in outside)


@pytest.mark.parametrize(
    ("r1", "r2", "intersection"),
    [
        ((1, 2), (3, 4), None),
        ((1, 2), (2, 3), (2, 2)),
        ((1, 2), (1, 2), (1, 2)),
        ((1, 3), (2, 4), (2, 3)),
        ((1, 4), (2, 3), (2, 3)),
        ((None, 1), (2, None), None),
        ((None, 1), (1, None), (1, 1)),
        ((None, 2), (1, None), (1, 2)),
        ((None, 1), (None, 2), (None, 1)),
        ((1, None), (2, None), (2, None)),
        ((1, None), (None, 2), (1, 2)),
    ],
)
def test_range_intersect(r1, r2, intersection):
    a = Range[int](min=r1[0], max=r1[1])
    b = Range[int](min=r2[0], max=r2[1])
    expected = None if intersection is None else Range[int](min=intersection[0], max=intersection[1])
    assert a.intersect(b) == expected
    assert b.intersect(a) == expected


# ---- Memory -------------------------------------------------------------------------------


class TestMemory:
    @pytest.mark.parametrize(
        ("value", "gb"),
        [
            ("512MB", 0.5),
            ("512mb", 0.5),
            ("1024MB", 1.0),
            ("16GB", 16.0),
            ("16 Gb", 16.0),
            ("16gB", 16.0),
            (" 16 GB ", 16.0),
            ("1 TB ", 1024.0),
            ("2tb", 2048.0),
            ("0.5TB", 512.0),
            ("1.5GB", 1.5),
            ("16", 16.0),
            (16, 16.0),
            (1.5, 1.5),
            (0, 0.0),
        ],
    )
    def test_parse(self, value, gb):
        memory = Memory.parse(value)
        assert isinstance(memory, Memory)
        assert memory == gb
        assert TypeAdapter(Memory).validate_python(value) == gb

    @pytest.mark.parametrize("value", ["1.5xb", "", "GB", "16 G B x", "16KB", "sixteen", "16GiB", "1e"])
    def test_invalid(self, value):
        with pytest.raises(ValueError, match="Invalid memory size"):
            Memory.parse(value)
        with pytest.raises(ValidationError, match="Invalid memory size"):
            TypeAdapter(Memory).validate_python(value)

    @pytest.mark.parametrize("value", [None, [16], {"gb": 16}])
    def test_wrong_type(self, value):
        with pytest.raises(ValueError, match="Invalid memory size"):
            Memory.parse(value)

    @pytest.mark.parametrize(("gb", "text"), [(16, "16GB"), (0.5, "0.5GB"), (1024, "1024GB"), (1.25, "1.25GB")])
    def test_display(self, gb, text):
        assert str(Memory(gb)) == text
        assert repr(Memory(gb)) == text

    def test_serializes_as_a_number_of_gb(self):
        adapter = TypeAdapter(Memory)
        assert adapter.dump_python(Memory.parse("512MB")) == 0.5
        assert adapter.dump_json(Memory.parse("2GB")) == b"2.0"


class TestMemoryRange:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("512MB", rng(0.5, 0.5)),
            ("512MB..", rng(0.5, None)),
            ("..1 TB", rng(None, 1024.0)),
            ("512..1 TB", rng(512.0, 1024.0)),
            ("16GB..32", rng(16.0, 32.0)),
            ("8GB..16GB", rng(8.0, 16.0)),
            (24, rng(24.0, 24.0)),
            ({"min": "512MB", "max": "1TB"}, rng(0.5, 1024.0)),
            ({"max": "1 tb"}, rng(None, 1024.0)),
        ],
    )
    def test_valid(self, value, expected):
        assert Range[Memory].model_validate(value).model_dump() == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("...", "Invalid memory size"),
            ("..", "Invalid empty range"),
            ("16GB..8GB", "Invalid range order: 16GB..8GB"),
            ("abc..", "Invalid memory size: abc"),
            ("1.5xb", "Invalid memory size: 1.5xb"),
        ],
    )
    def test_invalid(self, value, message):
        with pytest.raises(ValidationError, match=message):
            Range[Memory].model_validate(value)

    @pytest.mark.parametrize(
        ("value", "text"), [("16GB", "16GB"), ("8GB..", "8GB.."), ("..1TB", "..1024GB"), ("512MB..2GB", "0.5GB..2GB")]
    )
    def test_str(self, value, text):
        assert str(Range[Memory].model_validate(value)) == text


# ---- ComputeCapability --------------------------------------------------------------------


class TestComputeCapability:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("3.5", (3, 5)), (" 8.6 ", (8, 6)), (8.0, (8, 0)), (7.5, (7, 5)), ((7, 5), (7, 5)), ([9, 0], (9, 0)), (["8", "9"], (8, 9))],
    )
    def test_valid(self, value, expected):
        assert TypeAdapter(ComputeCapability).validate_python(value) == expected

    @pytest.mark.parametrize("value", ["3.5.1", "3.x", "8", 8, [1], [1, 2, 3], [7, "x"], None, {"major": 8}])
    def test_invalid(self, value):
        with pytest.raises(ValidationError, match="Invalid compute capability"):
            TypeAdapter(ComputeCapability).validate_python(value)

    def test_serializes_as_pair(self):
        spec = GPUSpec.model_validate({"compute_capability": "8.6"})
        assert spec.model_dump(mode="json")["compute_capability"] == [8, 6]


# ---- CPU ----------------------------------------------------------------------------------


class TestCPU:
    def test_integer(self):
        assert CPUSpec.model_validate(1).model_dump() == {"arch": None, "count": rng(1, 1)}

    @pytest.mark.parametrize(
        ("value", "arch", "lo", "hi"),
        [
            ("1..2", None, 1, 2),
            ("8", None, 8, 8),
            ("X86", CPUArchitecture.X86, DEFAULT_CPU_COUNT.min, DEFAULT_CPU_COUNT.max),
            ("arm", CPUArchitecture.ARM, 2, None),
            ("Arm", CPUArchitecture.ARM, 2, None),
            ("x86:2", CPUArchitecture.X86, 2, 2),
            ("2:x86", CPUArchitecture.X86, 2, 2),
            ("2..:ARM", CPUArchitecture.ARM, 2, None),
            ("ARM:2..", CPUArchitecture.ARM, 2, None),
            ("x86:16..", CPUArchitecture.X86, 16, None),
            ("16..:x86", CPUArchitecture.X86, 16, None),
            ("..8:arm", CPUArchitecture.ARM, None, 8),
            (" arm : 4 ", CPUArchitecture.ARM, 4, 4),
        ],
    )
    def test_valid_string(self, value, arch, lo, hi):
        assert CPUSpec.model_validate(value).model_dump() == {"arch": arch, "count": rng(lo, hi)}

    @pytest.mark.parametrize(
        ("value", "error"),
        [
            ("arm:", "CPU spec contains empty token: arm:"),
            (":arm", "CPU spec contains empty token: :arm"),
            ("x86::2", "CPU spec contains empty token: x86::2"),
            ("", "CPU spec contains empty token"),
            ("2:foo", "Invalid CPU architecture: 2:foo"),
            ("foo", "Invalid CPU architecture: foo"),
            ("aarch64", "Invalid CPU architecture"),
            ("x86_64", "Invalid CPU architecture"),
            ("-1", "Invalid CPU architecture"),
            ("arm:x86", "CPU spec arch conflict: arm:x86"),
            ("arm:arm", "CPU spec arch conflict"),
            ("2:arm:2", "CPU spec count conflict: 2:arm:2"),
            ("2:4", "CPU spec count conflict"),
            ("4..2", "Invalid range order: 4..2"),
            ("..", "Invalid empty range"),
        ],
    )
    def test_invalid_string(self, value, error):
        with pytest.raises(ValidationError, match=error):
            CPUSpec.model_validate(value)

    def test_range_object(self):
        assert CPUSpec.model_validate(Range[int](min=1, max=2)).model_dump() == {"arch": None, "count": rng(1, 2)}

    @pytest.mark.parametrize(
        ("value", "lo", "hi"),
        [
            pytest.param({"min": 1, "max": 2}, 1, 2, id="closed"),
            pytest.param({"min": 1}, 1, None, id="min-only"),
            pytest.param({"max": 2}, None, 2, id="max-only"),
            pytest.param({}, DEFAULT_CPU_COUNT.min, DEFAULT_CPU_COUNT.max, id="empty-is-defaults"),
        ],
    )
    def test_range_dict(self, value, lo, hi):
        assert CPUSpec.model_validate(value).model_dump() == {"arch": None, "count": rng(lo, hi)}

    @pytest.mark.parametrize(
        ("value", "arch", "count"),
        [
            ({"arch": "ARM", "count": {"min": 1, "max": 2}}, CPUArchitecture.ARM, rng(1, 2)),
            ({"arch": "x86"}, CPUArchitecture.X86, rng(2, None)),
            ({"count": {"max": 2}}, None, rng(None, 2)),
            ({"count": "4.."}, None, rng(4, None)),
            ({"count": 8, "arch": "arm"}, CPUArchitecture.ARM, rng(8, 8)),
        ],
    )
    def test_valid_dict(self, value, arch, count):
        assert CPUSpec.model_validate(value).model_dump() == {"arch": arch, "count": count}

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ({"arch": "x86", "min": 1, "max": 2}, "Extra inputs are not permitted"),
            ({"arch": "mips"}, "Input should be 'x86' or 'arm'"),
            ({"count": "arm"}, "valid integer"),
            ({"cores": 4}, "Extra inputs are not permitted"),
            (2.5, "valid dictionary"),
            (None, "valid dictionary"),
            ([], "valid dictionary"),
        ],
    )
    def test_invalid_dict_or_type(self, value, message):
        with pytest.raises(ValidationError, match=message):
            CPUSpec.model_validate(value)

    def test_arch_serializes_as_its_value(self):
        assert CPUSpec.model_validate("arm:4").model_dump(mode="json") == {"arch": "arm", "count": rng(4, 4)}


# ---- GPU ----------------------------------------------------------------------------------


def gpu(value) -> GPUSpec:
    return GPUSpec.model_validate(value)


class TestGPUString:
    def test_count(self):
        assert gpu("1") == gpu({"count": 1}) == gpu(1)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param("Nvidia", {"vendor": NVIDIA}, id="vendor-only-mixedcase"),
            pytest.param("NVIDIA:4", {"vendor": NVIDIA, "count": 4}, id="vendor-count"),
            pytest.param("amd", {"vendor": AMD}, id="amd"),
            pytest.param("intel", {"vendor": INTEL}, id="intel"),
            pytest.param("google", {"vendor": GOOGLE}, id="google"),
            pytest.param("tpu", {"vendor": GOOGLE}, id="tpu-alias"),
            pytest.param("TPU", {"vendor": GOOGLE}, id="tpu-alias-upper"),
            pytest.param("tenstorrent", {"vendor": TENSTORRENT}, id="tenstorrent"),
            pytest.param("tt", {"vendor": TENSTORRENT}, id="tt-alias"),
            pytest.param("TT:n300", {"vendor": TENSTORRENT, "name": ["n300"]}, id="tt-alias-name"),
            pytest.param("google:v3-64", {"vendor": GOOGLE, "name": ["v3-64"]}, id="vendor-and-name"),
            pytest.param("tpu:v5p-1024", {"vendor": GOOGLE, "name": ["v5p-1024"]}, id="tpu-and-name"),
            pytest.param("v5litepod-64:TPU", {"vendor": GOOGLE, "name": ["v5litepod-64"]}, id="name-then-tpu"),
            pytest.param("MI300X:AMD", {"vendor": AMD, "name": ["MI300X"]}, id="name-then-vendor"),
            pytest.param("v2-8", {"name": ["v2-8"]}, id="tpu-name-without-vendor"),
        ],
    )
    def test_vendor(self, value, expected):
        assert gpu(value) == gpu(expected)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("A100", {"name": ["A100"]}),
            ("a100", {"name": ["a100"]}),
            ("A100:2", {"name": ["A100"], "count": 2}),
            ("2:A100", {"name": ["A100"], "count": 2}),
            ("A10,A10G:2", {"name": ["A10", "A10G"], "count": 2}),
            ("A10G,A100", {"name": ["A10G", "A100"]}),
            ("H100:1..2", {"name": ["H100"], "count": "1..2"}),
            ("A100:80GB:2", {"name": ["A100"], "memory": "80GB", "count": 2}),
            ("80GB:A100:2", {"name": ["A100"], "memory": "80GB", "count": 2}),
            ("H100:8:80GB", {"name": ["H100"], "memory": "80GB", "count": 8}),
            ("nvidia:16GB", {"vendor": NVIDIA, "memory": "16GB"}),
            ("amd:MI300X:4", {"vendor": AMD, "name": ["MI300X"], "count": 4}),
            ("16GB", {"memory": "16GB"}),
            ("16gb", {"memory": "16GB"}),
            ("512MB", {"memory": 0.5}),
            ("1TB", {"memory": 1024}),
            ("24GB..", {"memory": "24GB.."}),
            ("..24GB", {"memory": "..24GB"}),
            ("16GB..32", {"memory": {"min": 16, "max": 32}}),
            ("16GB..32GB:2", {"memory": "16GB..32GB", "count": 2}),
            ("1..2", {"count": "1..2"}),
            ("..2", {"count": "..2"}),
            ("0", {"count": 0}),
            ("A100:0", {"name": ["A100"], "count": 0}),
            (" A100 : 2 ", {"name": ["A100"], "count": 2}),
            ("A 100", {"name": ["A100"]}),
        ],
    )
    def test_tokens_any_order(self, value, expected):
        assert gpu(value) == gpu(expected)

    def test_name_with_tpu_prefix(self, caplog):
        with caplog.at_level(logging.WARNING):
            spec = gpu("tpu-v3-2048")
        assert spec.name == ["v3-2048"]
        assert "deprecated" in caplog.text

    def test_names_list_with_tpu_prefix(self, caplog):
        with caplog.at_level(logging.WARNING):
            assert gpu({"name": ["tpu-v2-8", "v3-8"]}).name == ["v2-8", "v3-8"]

    def test_no_warning_without_prefix(self, caplog):
        with caplog.at_level(logging.WARNING):
            gpu("v3-8")
        assert "deprecated" not in caplog.text

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("A100,:2", "GPU name can not be empty: A100,:2"),
            (",A100", "Invalid memory size: ,A100"),  # not a letter first: memory, as in dstack
            ("A100,,H100", "GPU name can not be empty: A100,,H100"),
            ("A100:", "GPU spec contains empty token: A100:"),
            (":A100", "GPU spec contains empty token: :A100"),
            ("A100::2", "GPU spec contains empty token: A100::2"),
            ("", "GPU spec contains empty token"),
            ("Nvidia:A100:2:AMD", "GPU spec vendor conflict: Nvidia:A100:2:AMD"),
            ("nvidia:tt", "GPU spec vendor conflict"),
            ("A100:2:3", "GPU spec count conflict: A100:2:3"),
            ("1..2:4", "GPU spec count conflict"),
            ("A100:H100", "GPU spec name conflict: A100:H100"),
            ("16GB:24GB", "GPU spec memory conflict: 16GB:24GB"),
            ("2x", "Invalid memory size: 2x"),
            ("2..1", "Invalid range order: 2..1"),
            ("32GB..16GB", "Invalid range order: 32GB..16GB"),
            ("1.5", "valid integer"),
        ],
    )
    def test_invalid(self, value, message):
        with pytest.raises(ValidationError, match=message):
            gpu(value)


class TestGPUObject:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(None, None, id="null"),
            pytest.param("NVIDIA", NVIDIA, id="uppercase"),
            pytest.param("amd", AMD, id="lowercase"),
            pytest.param("Google", GOOGLE, id="mixedcase"),
            pytest.param("tpu", GOOGLE, id="tpu-lowercase"),
            pytest.param("TPU", GOOGLE, id="tpu-uppercase"),
            pytest.param("tt", TENSTORRENT, id="tt"),
            pytest.param("Tenstorrent", TENSTORRENT, id="tenstorrent"),
            pytest.param("intel", INTEL, id="intel"),
            pytest.param(GOOGLE, GOOGLE, id="enum-value"),
        ],
    )
    def test_vendor(self, value, expected):
        assert gpu({"vendor": value}).vendor == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("foo", "Unknown GPU vendor `foo`; use one of: nvidia, amd, google, intel, tenstorrent"),
            ("cuda", "Unknown GPU vendor `cuda`"),
            (1, "Unsupported type: 1"),
            (["nvidia"], "Unsupported type"),
        ],
    )
    def test_invalid_vendor(self, value, message):
        with pytest.raises(ValidationError, match=message):
            gpu({"vendor": value})

    @pytest.mark.parametrize(
        ("value", "names"),
        [("A100", ["A100"]), (["A100", "H100"], ["A100", "H100"]), ([], []), (5, ["5"]), ("tpu-v2-8", ["v2-8"])],
    )
    def test_name(self, value, names):
        assert gpu({"name": value}).name == names

    def test_full_object(self):
        spec = gpu(
            {
                "vendor": "nvidia",
                "name": ["A100", "H100"],
                "count": "1..4",
                "memory": "40GB..",
                "total_memory": "160GB..",
                "compute_capability": "8.0",
            }
        )
        assert spec.model_dump(mode="json") == {
            "vendor": "nvidia",
            "name": ["A100", "H100"],
            "count": rng(1, 4),
            "memory": rng(40.0, None),
            "total_memory": rng(160.0, None),
            "compute_capability": [8, 0],
        }

    @pytest.mark.parametrize("cc", [7.5, "7.5", [7, 5], (7, 5)])
    def test_compute_capability_forms(self, cc):
        assert gpu({"compute_capability": cc}).compute_capability == (7, 5)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ({"compute_capability": "3.5.1"}, "Invalid compute capability"),
            ({"compute_capability": "3.x"}, "Invalid compute capability"),
            ({"count": "2..1"}, "Invalid range order: 2..1"),
            ({"memory": "x"}, "Invalid memory size: x"),
            ({"total_memory": ".."}, "Invalid empty range"),
            ({"model": "A100"}, "Extra inputs are not permitted"),
            ({"count": {"min": 1, "step": 1}}, "Extra inputs are not permitted"),
            (2.5, "valid dictionary"),
            ([], "valid dictionary"),
        ],
    )
    def test_invalid(self, value, message):
        with pytest.raises(ValidationError, match=message):
            gpu(value)

    def test_object_count_defaults_to_one_or_more(self):
        assert gpu({}).count == DEFAULT_GPU_COUNT == Range[int](min=1)
        assert gpu({"name": "A100"}).count.model_dump() == rng(1, None)


# ---- disk ---------------------------------------------------------------------------------


class TestDisk:
    @pytest.mark.parametrize(
        ("value", "size"),
        [
            ("500GB", rng(500.0, 500.0)),
            ("100GB..", rng(100.0, None)),
            ("..1TB", rng(None, 1024.0)),
            (500, rng(500.0, 500.0)),
            ({"size": "200GB"}, rng(200.0, 200.0)),
            ({"size": {"min": "1TB"}}, rng(1024.0, None)),
        ],
    )
    def test_valid(self, value, size):
        assert DiskSpec.model_validate(value).model_dump() == {"size": size}

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("abc", "Invalid memory size: abc"),
            ({}, "Field required"),
            ({"size": "1TB", "type": "ssd"}, "Extra inputs are not permitted"),
            ("..", "Invalid empty range"),
            (None, "valid dictionary"),
        ],
    )
    def test_invalid(self, value, message):
        with pytest.raises(ValidationError, match=message):
            DiskSpec.model_validate(value)


# ---- ResourcesSpec ------------------------------------------------------------------------


class TestDefaults:
    def test_defaults(self):
        spec = ResourcesSpec()
        assert spec.cpu == CPUSpec(arch=None, count=Range[int](min=2))
        assert spec.memory == DEFAULT_MEMORY_SIZE == Range[Memory](min=Memory(8))
        assert spec.shm_size is None
        assert spec.gpu == DEFAULT_GPU
        assert spec.gpu.count == Range[int](min=0)
        assert spec.gpu.name is None and spec.gpu.vendor is None
        assert spec.disk == DEFAULT_DISK == DiskSpec(size=Range[Memory](min=Memory(100)))

    def test_defaults_display(self):
        assert ResourcesSpec().pretty_format() == "cpu=2.. mem=8GB.. disk=100GB.. gpu=0.."
        assert ResourcesSpec.model_validate({}).pretty_format() == "cpu=2.. mem=8GB.. disk=100GB.. gpu=0.."

    def test_task_defaults(self):
        cfg = parse_configuration({"type": "task", "commands": ["true"]})
        assert cfg.resources == ResourcesSpec()

    @pytest.mark.parametrize("value", ["A100", {"name": "A100"}, "nvidia", {}, "24GB"])
    def test_gpu_given_without_count_means_one_or_more(self, value):
        assert ResourcesSpec.model_validate({"gpu": value}).gpu.count == Range[int](min=1)

    def test_gpu_omitted_means_zero_or_more(self):
        assert ResourcesSpec.model_validate({"cpu": 4}).gpu.count == Range[int](min=0)

    def test_gpu_null_and_disk_null_stay_null(self):
        spec = ResourcesSpec.model_validate({"gpu": None, "disk": None})
        assert spec.gpu is None and spec.disk is None
        assert spec.pretty_format() == "cpu=2.. mem=8GB.."

    def test_fields_given_keep_other_defaults(self):
        spec = ResourcesSpec.model_validate({"gpu": "H100:8"})
        assert spec.cpu.count == Range[int](min=2)
        assert spec.memory == Range[Memory](min=Memory(8))
        assert spec.disk == DEFAULT_DISK

    @pytest.mark.parametrize(("value", "gb"), [("8GB", 8.0), (8, 8.0), ("512MB", 0.5), ("1TB", 1024.0)])
    def test_shm_size(self, value, gb):
        assert ResourcesSpec.model_validate({"shm_size": value}).shm_size == gb

    @pytest.mark.parametrize("value", ["8GB..", "x", "..", [8]])
    def test_shm_size_is_a_scalar(self, value):
        with pytest.raises(ValidationError, match="Invalid memory size"):
            ResourcesSpec.model_validate({"shm_size": value})


class TestPrettyFormat:
    """dstack's `ResourcesSpec.pretty_format` (pretty_resources: gpu=<name|vendor>:<mem>:<count>[:<total>][:<cc>])."""

    @pytest.mark.parametrize(
        ("resources", "text"),
        [
            ({"cpu": 4, "memory": "16GB"}, "cpu=4 mem=16GB disk=100GB.. gpu=0.."),
            ({"cpu": 4, "memory": "16GB", "gpu": 1}, "cpu=4 mem=16GB disk=100GB.. gpu=1"),
            ({"cpu": 4, "memory": "16GB", "gpu": "nvidia:1"}, "cpu=4 mem=16GB disk=100GB.. gpu=nvidia:1"),
            ({"cpu": 4, "memory": "16GB", "gpu": "A100:1"}, "cpu=4 mem=16GB disk=100GB.. gpu=A100:1"),
            ({"cpu": 4, "memory": "16GB", "gpu": "A100:40GB:1"}, "cpu=4 mem=16GB disk=100GB.. gpu=A100:40GB:1"),
            ({"gpu": {"count": 1, "total_memory": "80GB"}}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=1:80GB"),
            (
                {"cpu": 4, "memory": "16GB", "gpu": {"name": "A100", "memory": "40GB", "count": 2, "total_memory": "80GB"}},
                "cpu=4 mem=16GB disk=100GB.. gpu=A100:40GB:2:80GB",
            ),
            ({"gpu": {"count": 1, "compute_capability": "8.0"}}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=1:8.0"),
            ({"cpu": 2, "memory": "8GB", "disk": "100GB"}, "cpu=2 mem=8GB disk=100GB gpu=0.."),
            ({"cpu": 2, "memory": "8GB", "gpu": None}, "cpu=2 mem=8GB disk=100GB.."),
            ({"cpu": 2, "memory": "8GB", "disk": None, "gpu": None}, "cpu=2 mem=8GB"),
            ({"gpu": "H100:1..2"}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=H100:1..2"),
            ({"cpu": "x86:2..", "gpu": "H100:1..2"}, "cpu=x86:2.. mem=8GB.. disk=100GB.. gpu=H100:1..2"),
            ({"cpu": "ARM:4..8"}, "cpu=arm:4..8 mem=8GB.. disk=100GB.. gpu=0.."),
            ({"gpu": "A10,A10G:2"}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=A10,A10G:2"),
            ({"gpu": "amd:MI300X"}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=MI300X:1.."),
            ({"gpu": "tpu"}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=google:1.."),
            ({"gpu": "24GB..:2..4"}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=24GB..:2..4"),
            ({"gpu": "16GB..32"}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=16GB..32GB:1.."),
            ({"gpu": {"name": [""]}}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=1.."),
            ({"memory": "512MB..", "disk": "1TB.."}, "cpu=2.. mem=0.5GB.. disk=1024GB.. gpu=0.."),
            ({"memory": "..64GB"}, "cpu=2.. mem=..64GB disk=100GB.. gpu=0.."),
            ({"gpu": 0}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=0"),
        ],
    )
    def test_display(self, resources, text):
        assert ResourcesSpec.model_validate(resources).pretty_format() == text


class TestJsonDump:
    def test_defaults_dump(self):
        assert ResourcesSpec().model_dump(mode="json") == {
            "cpu": {"arch": None, "count": rng(2, None)},
            "memory": rng(8.0, None),
            "shm_size": None,
            "gpu": {
                "vendor": None,
                "name": None,
                "count": rng(0, None),
                "memory": None,
                "total_memory": None,
                "compute_capability": None,
            },
            "disk": {"size": rng(100.0, None)},
        }

    def test_shorthands_dump(self):
        dump = ResourcesSpec.model_validate(
            {"cpu": "arm:8", "memory": "64GB..", "shm_size": "1GB", "gpu": "tt:n300:2", "disk": "500GB"}
        ).model_dump(mode="json")
        assert dump["cpu"] == {"arch": "arm", "count": rng(8, 8)}
        assert dump["memory"] == rng(64.0, None)
        assert dump["shm_size"] == 1.0
        assert dump["gpu"]["vendor"] == "tenstorrent"
        assert dump["gpu"]["name"] == ["n300"]
        assert dump["gpu"]["count"] == rng(2, 2)
        assert dump["disk"] == {"size": rng(500.0, 500.0)}

    @pytest.mark.parametrize(
        "resources", [{}, {"cpu": "x86:4..8", "gpu": "A100:80GB:2", "disk": "1TB.."}, {"gpu": {"compute_capability": 7.5}}]
    )
    def test_dump_round_trips(self, resources):
        spec = ResourcesSpec.model_validate(resources)
        assert ResourcesSpec.model_validate(spec.model_dump(mode="json")) == spec


class TestUnknownKeys:
    @pytest.mark.parametrize(
        ("resources", "path"),
        [
            ({"gpus": 1}, "resources.gpus"),
            ({"cpu": {"cores": 1}}, "resources.cpu.cores"),
            ({"gpu": {"model": "A100"}}, "resources.gpu.model"),
            ({"disk": {"size": "1TB", "kind": "ssd"}}, "resources.disk.kind"),
            ({"memory": {"min": 1, "avg": 2}}, "resources.memory.avg"),
            ({"gpu": {"count": {"min": 1, "step": 2}}}, "resources.gpu.count.step"),
            ({"cpu": {"count": {"max": 4, "x": 1}}}, "resources.cpu.count.x"),
        ],
    )
    def test_rejected_at_every_level(self, resources, path):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration(task_with_resources(resources))
        issue = next(i for i in info.value.issues if i.path == path)
        assert issue.message == f"unknown field `{path.rsplit('.', 1)[1]}`"
        assert f"{path}: unknown field" in str(info.value)

    def test_misplaced_top_level_resource_hints_at_resources(self):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration({"type": "task", "commands": ["true"], "gpu": "A100"})
        (issue,) = info.value.issues
        assert issue.path == "gpu"
        assert "belongs under `resources:`" in issue.hint


class TestResourcesInTask:
    @pytest.mark.parametrize(
        ("resources", "path", "message"),
        [
            ({"gpu": "A100:2:3"}, "resources.gpu", "GPU spec count conflict: A100:2:3"),
            ({"cpu": "arm:x86"}, "resources.cpu", "CPU spec arch conflict: arm:x86"),
            ({"memory": "16GB..8GB"}, "resources.memory", "Invalid range order: 16GB..8GB"),
            ({"disk": ".."}, "resources.disk", "Invalid empty range"),
            ({"gpu": {"vendor": "foo"}}, "resources.gpu.vendor", "Unknown GPU vendor `foo`"),
            ({"shm_size": "x"}, "resources.shm_size", "Invalid memory size: x"),
        ],
    )
    def test_errors_name_the_field(self, resources, path, message):
        with pytest.raises(ConfigurationError, match=message) as info:
            parse_configuration(task_with_resources(resources))
        assert [i.path for i in info.value.issues] == [path]

    def test_resources_must_be_a_mapping(self):
        with pytest.raises(ConfigurationError, match="resources"):
            parse_configuration(task_with_resources("A100"))


class TestHostileAmounts:
    """Amounts that used to pass validation and then broke every admission pass or raised a
    traceback: each is now an error naming the field."""

    @pytest.mark.parametrize(
        ("resources", "field"),
        [
            ({"memory": 1e300}, "resources.memory"),
            ({"memory": ".inf"}, "resources.memory"),
            ({"memory": float("inf")}, "resources.memory"),
            ({"memory": float("nan")}, "resources.memory"),
            ({"memory": "1e400GB"}, "resources.memory"),
            ({"memory": "-8GB"}, "resources.memory"),
            ({"memory": "-1..8"}, "resources.memory"),
            ({"cpu": int("9" * 400)}, "resources.cpu"),
            ({"cpu": -2}, "resources.cpu"),
            ({"shm_size": "-1GB"}, "resources.shm_size"),
            ({"shm_size": float("inf")}, "resources.shm_size"),
            ({"gpu": 10**12}, "resources.gpu"),
            ({"disk": "1e400GB"}, "resources.disk"),
        ],
    )
    def test_rejected_with_the_field_named(self, resources, field):
        from dstack_ray.config import ConfigurationError, parse_configuration

        with pytest.raises(ConfigurationError) as info:
            parse_configuration({"type": "task", "commands": ["true"], "resources": resources})
        assert info.value.issues[0].path.startswith(field), info.value
