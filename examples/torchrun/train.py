"""DDP on every process torchrun started: check that all ranks met, train a few steps, check
that the weights stayed identical on every rank."""

import os
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
local_rank = int(os.environ["LOCAL_RANK"])
device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
if cuda:
    torch.cuda.set_device(device)

ranks = torch.tensor([float(rank)], device=device)
dist.all_reduce(ranks)
print(f"rank {rank}/{world} on {socket.gethostname()}: all-reduce of the ranks = {ranks.item():.0f}"
      f" (expected {world * (world - 1) // 2})", flush=True)

torch.manual_seed(rank)  # each rank its own data; DDP averages the gradients
model = DistributedDataParallel(nn.Linear(32, 1).to(device), device_ids=[local_rank] if cuda else None)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
target = torch.randn(32, 1, device=device)
for step in range(1, 21):
    inputs = torch.randn(64, 32, device=device)
    loss = nn.functional.mse_loss(model(inputs), inputs @ target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if rank == 0 and step % 5 == 0:
        print(f"step {step} loss {loss.item():.4f}", flush=True)

checksum = torch.cat([p.detach().flatten() for p in model.parameters()]).sum().reshape(1)
gathered = [torch.zeros_like(checksum) for _ in range(world)]
dist.all_gather(gathered, checksum)
print(f"rank {rank}: weights in sync across {world} ranks: {all(torch.allclose(gathered[0], g) for g in gathered)}", flush=True)
dist.destroy_process_group()
