"""The GPU tier: real NVML on a machine with NVIDIA GPUs (skipped elsewhere).

An idle GPU and a busy one (a CUDA matmul loop; needs PyTorch) are sampled through
dstack-ray's NvmlSampler and judged by the utilization policy; a one-GPU task on a local Ray
gets its GPU, dstack's GPU variables and NVML metrics.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pynvml = pytest.importorskip("pynvml")
try:
    pynvml.nvmlInit()
    GPUS = pynvml.nvmlDeviceGetCount()
except pynvml.NVMLError as e:  # no driver here: this tier needs a GPU machine
    pytest.skip(f"no NVIDIA GPU with NVML on this machine ({e})", allow_module_level=True)

from dstack_ray.metrics.gpu import NvmlSampler  # noqa: E402
from dstack_ray.runtime.utilization import utilization_violation  # noqa: E402

BUSY = """
import torch, time
x = torch.randn(8192, 8192, device="cuda")
end = time.time() + {seconds}
while time.time() < end:
    x = x @ x
    x = x / x.norm()
torch.cuda.synchronize()
"""


def test_idle_gpu_samples_and_policy():
    sampler = NvmlSampler()
    samples = []
    for _ in range(5):
        samples += sampler.sample(["0"])
        time.sleep(0.2)
    assert all(0 <= s.utilization <= 100 and s.memory_total > 0 for s in samples)
    series = {"0": [(time.time() - 290 + i, s.utilization) for i, s in enumerate(samples)]}
    if max(s.utilization for s in samples) < 5:
        assert utilization_violation(series, 30, 300, time.time()) is not None


def test_busy_gpu_is_seen_busy():
    pytest.importorskip("torch")
    worker = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=15)])
    try:
        sampler = NvmlSampler()
        time.sleep(4)
        utilizations = []
        for _ in range(10):
            utilizations += [s.utilization for s in sampler.sample(["0"])]
            time.sleep(0.5)
        assert max(utilizations) > 50, utilizations
        series = {"0": [(time.time() - 290 + i * 30, u) for i, u in enumerate(utilizations)]}
        assert utilization_violation(series, 30, 300, time.time()) is None
    finally:
        worker.kill()


def test_gpu_task_on_local_ray(tmp_path):
    import ray

    from dstack_ray import Client
    from dstack_ray.runtime.settings import RuntimeSettings

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        client = Client(settings=RuntimeSettings(state_dir=str(tmp_path), metrics_interval=0.5))
        run = client.apply(
            {
                "type": "task",
                "name": "gpu-local",
                "resources": {"cpu": 1, "memory": "1GB", "gpu": 1},
                "commands": ["echo cuda=$CUDA_VISIBLE_DEVICES gpus=$DSTACK_GPUS_PER_NODE", "nvidia-smi -L", "sleep 3"],
            }
        )
        assert run.wait(120).value == "done", run.events()
        lines = list(run.logs())
        assert lines[0].startswith("cuda=") and lines[0].endswith("gpus=1")
        assert any(line.startswith("GPU ") for line in lines)
        samples = run.metrics()
        assert samples and all(0 <= s.utilization <= 100 for s in samples)
    finally:
        ray.shutdown()
