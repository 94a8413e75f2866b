"""Worker for the DDP test of tests/test_truth.py (gloo on CPU): each rank seeds differently,
initializes its weights with nn.init, wraps the model in DDP and saves what it holds."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import weightnorm as wn
from launch import init_gloo


def ddp_init_worker(rank: int, world: int, folder: str) -> None:
    init_gloo(rank, world, folder)
    try:
        torch.manual_seed(0)
        model = wn.apply_weight_norm(
            nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 5))
        )
        torch.manual_seed(100 + rank)  # every rank draws its own init
        for m in model.modules():
            if wn.is_weight_normed(m):
                nn.init.normal_(m.weight, 0.0, 0.05)
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(rank))
        ddp(x).sum().backward()  # a forward and backward after wrapping: nothing left to write
        state = {k: v.clone() for k, v in model.state_dict().items()}
        weights = [model[0].weight.detach().flatten(), model[3].weight.detach().flatten()]
        state["weights"] = torch.cat(weights)
        torch.save(state, Path(folder) / f"rank{rank}.pt")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
