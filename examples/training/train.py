"""A small classifier on synthetic data: trains on the GPU when there is one, else on the CPU,
and saves a checkpoint under $CHECKPOINT_DIR."""

import os

import torch
from torch import nn

device = "cuda" if torch.cuda.is_available() else "cpu"
epochs = int(os.environ.get("EPOCHS", "5"))
torch.manual_seed(0)

features = torch.randn(4096, 20)
labels = (features @ torch.randn(20, 1) > 0).float()
features, labels = features.to(device), labels.to(device)

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
loss_fn = nn.BCEWithLogitsLoss()
print(f"training on {device} ({os.environ.get('DSTACK_GPUS_NUM', '0')} GPU(s) on this node)", flush=True)

for epoch in range(1, epochs + 1):
    order = torch.randperm(len(features), device=device)
    for start in range(0, len(features), 256):
        batch = order[start : start + 256]
        optimizer.zero_grad()
        loss = loss_fn(model(features[batch]), labels[batch])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = ((model(features) > 0).float() == labels).float().mean().item()
    print(f"epoch {epoch}/{epochs} loss {loss.item():.4f} accuracy {accuracy:.3f}", flush=True)

checkpoints = os.path.expanduser(os.environ.get("CHECKPOINT_DIR", "~/checkpoints"))
os.makedirs(checkpoints, exist_ok=True)
path = os.path.join(checkpoints, "model.pt")
torch.save(model.state_dict(), path)
print(f"saved {path}", flush=True)
