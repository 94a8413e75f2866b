"""A zoo model trained under DDP and FSDP2 on 2 CPU processes (gloo), in both modes: the ranks
end bit-identical, and equal to one process trained on the union of their batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch import launch
from weightnorm.experiments import zoo
from zoo_dist_worker import MODEL, train, worker

pytestmark = pytest.mark.skipif(
    bool(zoo.missing_packages([MODEL])) or not torch.distributed.is_available(),
    reason="needs the zoo extra and torch.distributed",
)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
@pytest.mark.parametrize("mode", ["modules", "optimizer"])
def test_ranks_agree_and_match_one_process(tmp_path: Path, mode: str, wrapper: str) -> None:
    launch(worker, 2, (str(tmp_path), mode, wrapper), timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert list(ranks[0]) == list(ranks[1])
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    torch.set_num_threads(1)
    single = train(mode, "none")
    assert list(single) == list(ranks[0])
    for key, value in single.items():
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-6, msg=key)
    # and the steps did move the weights (a silent no-op would agree everywhere too)
    start = train(mode, "none", steps=0)
    moved = [k for k in start if not torch.equal(start[k], single[k])]
    assert len(moved) > len(single) // 2


def test_optimizer_level_refuses_sharded_units(tmp_path: Path) -> None:
    """Under FSDP2 a unit along dim 1 is split across ranks: a clear error, not wrong norms."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    import weightnorm as wn

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1
    )
    try:
        model = nn.Sequential(nn.ConvTranspose1d(4, 6, 3), nn.Conv1d(6, 2, 1))
        fully_shard(model)
        with pytest.raises(wn.WeightNormError, match=r"0.weight is a DTensor .* dim=1"):
            wn.optim.WeightNormOptimizer(model, torch.optim.Adam, params={"0.weight": 1})
        opt = wn.optim.WeightNormOptimizer(model, torch.optim.Adam, params={"1.weight": 0})
        assert list(opt.dims()) == ["1.weight"]
    finally:
        torch.distributed.destroy_process_group()
