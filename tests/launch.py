"""Start test ranks robustly: fresh processes, a deadline, every rank killed when it passes."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from typing import Any

import torch


def launch(
    fn: Callable[..., None], world: int, args: tuple[Any, ...], timeout: float, tries: int = 2
) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes; raise if any fails.

    Two ways a run can end that are torch's and not the code under test are run again, with a
    fresh rendezvous, up to ``tries`` times in all: a run past ``timeout`` seconds (every rank
    killed; gloo's rendezvous on torch 2.4.1 hung, rarely, on this 2-core machine while other
    work ran), and a rank aborted by SIGABRT (torch 2.13's gloo sometimes aborts a process as it
    exits, after its work and its process group's teardown: "terminate called without an active
    exception"). Any other failure is raised at once."""
    for attempt in range(tries):
        os.environ[ATTEMPT] = str(attempt)
        context = torch.multiprocessing.start_processes(
            fn, args=(world, *args), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    for p in context.processes:
                        if p.is_alive():
                            p.kill()
                    break
            else:
                return
        except torch.multiprocessing.ProcessExitedException as err:
            if err.signal_name != "SIGABRT" or attempt == tries - 1:
                raise
    raise TimeoutError(
        f"{world} ranks of {fn.__name__} did not finish in {timeout:.0f} s, {tries} times"
    )


#: The environment variable that tells the ranks which try they are (a rendezvous file each).
ATTEMPT = "WN_TEST_LAUNCH_ATTEMPT"


def init_gloo(rank: int, world: int, folder: str) -> None:
    """A rank's process group: gloo, a file rendezvous in ``folder`` (no TCP port to collide with
    another run), a 60 s timeout on every collective, one thread (two ranks on two cores)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous{os.environ.get(ATTEMPT, '0')}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
