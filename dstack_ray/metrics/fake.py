"""A scripted GPU sampler, for tests of the utilization policy on machines without GPUs.

Use it as `dstack_ray.metrics.fake:FakeSampler?utilization=5&history=600`: every assigned GPU
reports `utilization` percent; the first call also returns `history` seconds of earlier
samples (one per `step` seconds), as if the node had been sampled that long already.
"""

from __future__ import annotations

import time
from typing import List, Sequence

from dstack_ray.metrics.gpu import GpuSample

GB = 1024**3


class FakeSampler:
    def __init__(self, utilization: str = "0", history: str = "0", step: str = "30", gpus: str = "1") -> None:
        self.utilization = float(utilization)
        self.history = float(history)
        self.step = float(step)
        self.gpus = int(gpus)
        self._first = True

    def sample(self, gpu_ids: Sequence[str]) -> List[GpuSample]:
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
