"""A scripted GPU sampler, for tests of the utilization policy on machines without GPUs.

A head whose `gpu_sampler` setting is `dstack_ray.metrics.fake:FakeSampler` (a test cluster's)
reads each job's script from the job's env, `DSTACK_RAY_FAKE_GPU=utilization=5&history=600`:
every assigned GPU reports `utilization` percent; the first call also returns `history` seconds
of earlier samples (one per `step` seconds), as if the node had been sampled that long already.
`nvml=1` samples with NVML instead (what a head without the fake does). The script is data, never
code: which sampler runs is the head's setting alone.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import parse_qsl

from dstack_ray.metrics.gpu import GpuSample, NvmlSampler

SCRIPT_ENV = "DSTACK_RAY_FAKE_GPU"

GB = 1024**3


class FakeSampler:
    def __init__(self, utilization: str = "0", history: str = "0", step: str = "30", gpus: str = "1") -> None:
        self.utilization = float(utilization)
        self.history = float(history)
        self.step = float(step)
        self.gpus = int(gpus)
        self._first = True
        self._nvml: Optional[Any] = None

    def configure_for_job(self, env: Dict[str, str]) -> None:
        script = dict(parse_qsl(env.get(SCRIPT_ENV, "")))
        if script.pop("nvml", None) == "1":
            self._nvml = NvmlSampler()  # NoGpuMetrics where the node has none, as without the fake
        for name in ("utilization", "history", "step"):
            if name in script:
                setattr(self, name, float(script[name]))
        if "gpus" in script:
            self.gpus = int(script["gpus"])

    def sample(self, gpu_ids: Sequence[str]) -> List[GpuSample]:
        if self._nvml is not None:
            return self._nvml.sample(gpu_ids)
        ids = list(gpu_ids) or [str(i) for i in range(self.gpus)]
        now = time.time()
        moments = [now]
        if self._first and self.history > 0:
            count = int(self.history // self.step)
            moments = [now - self.step * i for i in range(count, 0, -1)] + [now]
        self._first = False
        return [
            GpuSample(gpu=gpu, utilization=self.utilization, memory_used=GB, memory_total=16 * GB, at=at)
            for at in moments
            for gpu in ids
        ]
