"""Training a zoo model under DDP and FSDP2 (2 CPU processes, gloo), in both modes.

Started by ``launch.launch``: a file rendezvous in a fresh folder (no TCP port to collide with
another run), a timeout on every collective, one thread per rank (two ranks on two cores), and a
barrier before the process group is torn down (a rank that leaves while the other still talks
makes gloo abort it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

import weightnorm as wn
from launch import init_gloo
from weightnorm.experiments import zoo

MODEL = "speecht5-hifigan"
STEPS = 3
LR = 1e-3


def _local(inputs: zoo.Inputs, rank: int, world: int) -> zoo.Inputs:
    """This rank's slice of the batch (dim 0 of every tensor)."""
    args, kwargs = inputs

    def part(t: Any) -> Any:
        return t.chunk(world)[rank] if isinstance(t, torch.Tensor) else t

    return tuple(part(a) for a in args), {k: part(v) for k, v in kwargs.items()}


def _full(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in state.items()
    }


def train(
    mode: str, wrapper: str, rank: int = 0, world: int = 1, steps: int = STEPS
) -> dict[str, torch.Tensor]:
    """Train the zoo model for ``steps`` Adam steps on this rank's part of each batch; return the
    final (full) state dict. ``mode``: "modules" (our reparameterized modules) or "optimizer"
    (the optimizer-level mode on the model's own parameterization); ``wrapper``: "none",
    "ddp" or "fsdp2"."""
    spec = zoo.ZOO[MODEL]
    model = spec.build()
    if mode == "modules":
        wn.replace_torch_weight_norm(model)
    else:
        dims = wn.optim.WeightNormOptimizer.from_model(model, torch.optim.Adam).dims()
    forward: nn.Module = model
    if wrapper == "ddp":
        forward = nn.parallel.DistributedDataParallel(model)
    elif wrapper == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
    opt: torch.optim.Optimizer
    if mode == "modules":
        opt = torch.optim.Adam(model.parameters(), lr=LR)
    else:  # (on the wrapped model: FSDP2 has replaced the parameters by sharded ones)
        opt = wn.optim.WeightNormOptimizer(model, torch.optim.Adam, params=dims, lr=LR)
    for step in range(steps):
        opt.zero_grad()
        inputs = spec.inputs(step)
        with torch.no_grad():  # the whole batch's output shape, for this rank's part of a target
            shape = spec.output(spec.build(), inputs).shape
        target = torch.randn(shape, generator=torch.Generator().manual_seed(step)).chunk(world)
        spec.loss(forward, _local(inputs, rank, world), target[rank]).backward()
        opt.step()
    return _full(model.state_dict())


def worker(rank: int, world: int, folder: str, mode: str, wrapper: str) -> None:
    init_gloo(rank, world, folder)
    try:
        state = train(mode, wrapper, rank, world)
        torch.save(state, Path(folder) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears down while another still talks
    finally:
        dist.destroy_process_group()
