"""Worker for the 2-process forced-weight-norm test (gloo on CPU): each rank trains a DDP model
under ``wn.force_weight_norm`` on its own half of a batch and writes what it ended with."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import weightnorm as wn
from launch import init_gloo


def build_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(),
        nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 16, 5),
    )  # fmt: skip
    wn.apply_weight_norm(net, exclude=["5"])
    wn.weight_norm(net[5], gain=1.0)  # a fixed gain (EDM2's magnitude-preserving layer)
    return net


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, generator=gen), torch.randn(8, 5, generator=gen)


def worker(rank: int, world: int, folder: str, steps: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    init_gloo(rank, world, folder)
    try:
        model = build_model()
        if rank != 0:  # DDP broadcasts rank 0's parameters: the ranks start apart, end equal
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.5)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=0.05)
        forced = wn.force_weight_norm(ddp, opt)
        tracker = wn.AngularStepTracker(ddp, opt)
        x, y = batch()
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        angles = []
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x), y).backward()
            opt.step()
            angles.append({k: s.per_unit.clone() for k, s in tracker.last().items()})
        norms = {k: torch.tensor(n) for k, n in forced.norms.items()}
        torch.save(
            {"state": model.state_dict(), "angles": angles, "norms": norms},
            Path(folder) / f"rank{rank}.pt",
        )
        torch.distributed.barrier()  # no rank tears down while another still talks
    finally:
        torch.distributed.destroy_process_group()
