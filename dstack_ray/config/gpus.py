"""Known accelerators: which vendor makes a GPU name, and how much memory it has.

Used to infer the GPU vendor from names (as dstack does) and to describe cluster nodes and
catalog offers. Names compare case-insensitively.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class AcceleratorVendor(str, enum.Enum):
    NVIDIA = "nvidia"
    AMD = "amd"
    GOOGLE = "google"
    INTEL = "intel"
    TENSTORRENT = "tenstorrent"

    @classmethod
    def from_token(cls, token: str) -> "AcceleratorVendor":
        """`nvidia`, `AMD`, `tpu` (google), `tt` (tenstorrent)...; ValueError otherwise."""
        value = token.lower()
        aliases = {"tpu": cls.GOOGLE, "tt": cls.TENSTORRENT}
        if value in aliases:
            return aliases[value]
        return cls(value)


class CPUArchitecture(str, enum.Enum):
    X86 = "x86"
    ARM = "arm"


@dataclass(frozen=True)
class Accelerator:
    name: str
    vendor: AcceleratorVendor
    memory_gb: float
    compute_capability: Optional[tuple[int, int]] = None


def _nvidia(name: str, memory: float, cc: tuple[int, int]) -> Accelerator:
    return Accelerator(name, AcceleratorVendor.NVIDIA, memory, cc)


KNOWN_ACCELERATORS: tuple[Accelerator, ...] = (
    _nvidia("A10", 24, (8, 6)), _nvidia("A16", 16, (8, 6)), _nvidia("A40", 48, (8, 6)),
    _nvidia("A100", 40, (8, 0)), _nvidia("A100", 80, (8, 0)), _nvidia("A10G", 24, (8, 6)),
    _nvidia("A4000", 16, (8, 6)), _nvidia("A4500", 20, (8, 6)), _nvidia("A5000", 24, (8, 6)),
    _nvidia("A6000", 48, (8, 6)), _nvidia("H100", 80, (9, 0)), _nvidia("H100NVL", 94, (9, 0)),
    _nvidia("H200", 141, (9, 0)), _nvidia("H200NVL", 141, (9, 0)), _nvidia("B200", 180, (10, 0)),
    _nvidia("GB200", 186, (10, 0)), _nvidia("B300", 270, (10, 0)), _nvidia("GH200", 96, (9, 0)),
    _nvidia("L4", 24, (8, 9)), _nvidia("L40", 48, (8, 9)), _nvidia("L40S", 48, (8, 9)),
    _nvidia("P100", 16, (6, 0)), _nvidia("T4", 16, (7, 5)), _nvidia("V100", 16, (7, 0)),
    _nvidia("V100", 32, (7, 0)), _nvidia("RTX2060", 6, (7, 5)), _nvidia("RTX2070", 8, (7, 5)),
    _nvidia("RTX2080", 8, (7, 5)), _nvidia("RTX2080Ti", 11, (7, 5)), _nvidia("RTX3060", 12, (8, 6)),
    _nvidia("RTX3070", 8, (8, 6)), _nvidia("RTX3080", 10, (8, 6)), _nvidia("RTX3090", 24, (8, 6)),
    _nvidia("RTX4060Ti", 16, (8, 9)), _nvidia("RTX4070", 12, (8, 9)), _nvidia("RTX4080", 16, (8, 9)),
    _nvidia("RTX4090", 24, (8, 9)), _nvidia("RTX5080", 16, (12, 0)), _nvidia("RTX5090", 32, (12, 0)),
    _nvidia("RTX6000", 24, (7, 5)), _nvidia("RTX4000Ada", 20, (8, 9)),
    _nvidia("RTX6000Ada", 48, (8, 9)), _nvidia("RTXPRO6000", 96, (12, 0)),
    _nvidia("GB300", 270, (10, 0)), _nvidia("RTX2000Ada", 16, (8, 9)),
    _nvidia("RTX2060SUPER", 8, (7, 5)), _nvidia("RTX2070SUPER", 8, (7, 5)),
    _nvidia("RTX2080SUPER", 8, (7, 5)), _nvidia("RTX3050", 6, (8, 6)), _nvidia("RTX3060Ti", 8, (8, 6)),
    _nvidia("RTX3070Ti", 8, (8, 6)), _nvidia("RTX3080Ti", 12, (8, 6)), _nvidia("RTX3090Ti", 24, (8, 6)),
    _nvidia("RTX4060", 8, (8, 9)), _nvidia("RTX4070SUPER", 12, (8, 9)), _nvidia("RTX4070Ti", 12, (8, 9)),
    _nvidia("RTX4070TiSUPER", 16, (8, 9)), _nvidia("RTX4080SUPER", 16, (8, 9)),
    _nvidia("RTX5060", 8, (12, 0)), _nvidia("RTX5060Ti", 16, (12, 0)), _nvidia("RTX5070", 12, (12, 0)),
    _nvidia("RTX5070Ti", 16, (12, 0)), _nvidia("RTXPRO4500", 32, (12, 0)),
    *(
        Accelerator(name, AcceleratorVendor.AMD, memory)
        for name, memory in (
            ("MI100", 32), ("MI210", 64), ("MI250", 128), ("MI250X", 128), ("MI300A", 128),
            ("MI300X", 192), ("MI308X", 128), ("MI325X", 256), ("MI350X", 288), ("MI355X", 288),
        )
    ),
    *(
        Accelerator(name, AcceleratorVendor.GOOGLE, 0)
        for name in ("v2", "v3", "v4", "v5p", "v5litepod", "v6e")
    ),
    Accelerator("Gaudi", AcceleratorVendor.INTEL, 32),
    Accelerator("Gaudi2", AcceleratorVendor.INTEL, 96),
    Accelerator("Gaudi3", AcceleratorVendor.INTEL, 128),
    *(
        Accelerator(name, AcceleratorVendor.TENSTORRENT, memory)
        for name, memory in (
            ("n150", 12), ("n300", 24), ("tt-galaxy-wh", 12), ("p100a", 28), ("p150", 32),
            ("p300", 64), ("tt-galaxy-bh", 32),
        )
    ),
)


def find_accelerators(name: str) -> list[Accelerator]:
    """All known accelerators with this name (A100 comes in 40GB and 80GB), any case."""
    wanted = name.lower()
    return [acc for acc in KNOWN_ACCELERATORS if acc.name.lower() == wanted]


def vendors_of(name: str) -> set[AcceleratorVendor]:
    """The vendors known to make a GPU of this name; empty when the name is unknown."""
    return {acc.vendor for acc in find_accelerators(name)}


def requested_gpu_vendors(name: str) -> set[AcceleratorVendor]:
    """The vendors of a GPU name written in `resources.gpu`, by dstack's rule
    (`detect_gpu_vendors_by_gpu_name`): a known GPU name (any case), or a TPU written as
    `<version>-<cores>` (`v5litepod-8`, `v3-64`); a bare TPU version (`v4`) is unknown there."""
    vendors = {acc.vendor for acc in find_accelerators(name) if acc.vendor != AcceleratorVendor.GOOGLE}
    version, _, cores = name.lower().partition("-")
    if cores.isdigit() and any(
        acc.vendor == AcceleratorVendor.GOOGLE for acc in find_accelerators(version)
    ):
        vendors.add(AcceleratorVendor.GOOGLE)
    return vendors


def canonical_name(name: str) -> str:
    """`h100` -> `H100` when the name is known, the name unchanged otherwise."""
    found = find_accelerators(name)
    return found[0].name if found else name
