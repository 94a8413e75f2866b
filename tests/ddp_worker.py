"""Worker for the 2-process tests (gloo on CPU). Each rank writes what it ended with to a file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import weightnorm as wn
from launch import init_gloo


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return wn.apply_weight_norm(
        nn.Sequential(
            nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv1d(8, 6, 3, bias=False), wn.MeanOnlyBatchNorm1d(6), nn.ReLU(),
            nn.Flatten(), nn.Linear(6 * 14, 5),
        )
    )  # fmt: skip


def full_batch() -> torch.Tensor:
    return torch.randn(12, 3, 16, generator=torch.Generator().manual_seed(1)) * 2 + 0.5


def worker(rank: int, world: int, folder: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    init_gloo(rank, world, folder)
    try:
        model = build_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        if rank != 0:  # ranks drift apart after wrapping: init must still agree (it broadcasts)
            torch.manual_seed(100 + rank)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
        x = full_batch().chunk(world)[rank]
        wn.data_dependent_init(ddp, x)
        state = {k: v.clone() for k, v in model.state_dict().items()}

        # synchronized mean-only BN: forward and gradient against the concatenated batch
        torch.manual_seed(5)
        bn = wn.SyncMeanOnlyBatchNorm(4)
        with torch.no_grad():
            bn.bias.copy_(torch.arange(4.0))
        y_full = torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(2)) + 3
        upstream = torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(3))
        y_local = y_full.chunk(world)[rank].clone().requires_grad_(True)
        out = bn(y_local)
        out.backward(upstream.chunk(world)[rank])
        torch.save(
            {
                "state": state,
                "bn_out": out.detach(),
                "bn_grad": y_local.grad,
                "bn_bias_grad": bn.bias.grad,
                "bn_running_mean": bn.running_mean,
            },
            Path(folder) / f"rank{rank}.pt",
        )
        torch.distributed.barrier()  # no rank tears down while another still talks
    finally:
        torch.distributed.destroy_process_group()
