"""GPU samples for the utilization policy and `dstack-ray metrics`.

A sampler is any class with `sample(gpu_ids) -> list[GpuSample]`, named by an import path in
the runtime settings (`gpu_sampler`), so tests can drive the policy with a fake source. The
default reads NVML (nvidia-ml-py) for exactly the GPUs Ray assigned to the node agent.
"""

from __future__ import annotations

import importlib
import time
from urllib.parse import parse_qsl
from typing import Any, Dict, List, Optional, Sequence

from pydantic import BaseModel


class NoGpuMetrics(Exception):
    """This node cannot report GPU metrics (no NVML, no driver...); the message says why."""


class GpuSample(BaseModel):
    gpu: str  # the GPU id as Ray assigned it (CUDA_VISIBLE_DEVICES value)
    utilization: float  # percent, 0..100
    memory_used: int  # bytes
    memory_total: int  # bytes
    at: Optional[float] = None  # UNIX time; the agent stamps samples that come without one


class NvmlSampler:
    """Utilization and memory of the assigned GPUs, read with NVML."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as e:
            raise NoGpuMetrics(f"nvidia-ml-py is not installed: {e}") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NoGpuMetrics(f"NVML is not available on this node: {e}") from None
        self._nvml = pynvml

    def sample(self, gpu_ids: Sequence[str]) -> List[GpuSample]:
        nvml = self._nvml
        samples = []
        now = time.time()
        for gpu in gpu_ids:
            try:
                handle = self._handle(gpu)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as e:
                raise NoGpuMetrics(f"cannot read GPU {gpu}: {e}") from None
            samples.append(
                GpuSample(gpu=str(gpu), utilization=float(rates.gpu), memory_used=int(memory.used), memory_total=int(memory.total), at=now)
            )
        return samples

    def _handle(self, gpu: str) -> Any:
        nvml = self._nvml
        if str(gpu).isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(gpu))
        return nvml.nvmlDeviceGetHandleByUUID(str(gpu))


def load_sampler(path: str, job_env: Optional[Dict[str, str]] = None) -> Any:
    """Instantiate the sampler at `module:Class` (or `module:Class?key=value&...`, passed as
    keyword arguments); NoGpuMetrics when it cannot work on this node. `path` is the head's
    setting, never a client's. A sampler with `configure_for_job` is given the job's env (the
    scripted fake reads its script there)."""
    target, _, query = path.partition("?")
    module_name, _, attr = target.partition(":")
    kwargs = dict(parse_qsl(query))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise NoGpuMetrics(f"cannot load the GPU sampler {path}: {e}") from None
    sampler = factory(**kwargs)
    configure = getattr(sampler, "configure_for_job", None)
    if configure is not None:
        configure(job_env or {})
    return sampler
