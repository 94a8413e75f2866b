"""Resumable, parallel runs: every experiment's runs go through :class:`Jobs`.

A job is any frozen dataclass with a ``name``; running it returns a JSON-able record. Each
record is written atomically to ``<out>/runs/<name>.json`` with a key hashing everything that
determines it; a rerun skips jobs whose file holds the same key, so an interruption loses only
the jobs in flight and a changed configuration never reuses stale results. Under
``torch.distributed`` every rank runs every job (the job itself is distributed) and rank 0 writes.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import __version__
from .._io import atomic_write_text

__all__ = ["Job", "Jobs", "MethodSeed", "Progress", "distributed", "run_method_seeds"]

Progress = Callable[[int, int, str], None]


class Job(Hashable, Protocol):
    """A run's identity: a frozen dataclass with a ``name`` usable as a file name."""

    @property
    def name(self) -> str: ...


def distributed() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside ``torch.distributed``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_WORKER: dict[str, Any] = {}


def _worker_init(run: Callable[[Any], dict[str, Any]], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["run"] = run


def _worker_run(job: Any) -> dict[str, Any]:
    return _WORKER["run"](job)  # type: ignore[no-any-return]


class Jobs:
    """Run jobs in this process or in ``workers`` spawned processes, keeping every result.

    Args:
        out: the experiment's folder (records go to ``out/runs``).
        run: ``run(job) -> record``; picklable when ``workers > 1`` (it is sent once per worker).
        context: everything besides the job that determines a record (settings, data
            fingerprint, architecture); hashed into each record's key with the library version.
        workers: parallel processes.
        progress: ``progress(done, total, message)`` after each job.
        describe: a short status of a finished record for the progress message.
    """

    def __init__(
        self,
        out: str | Path,
        run: Callable[[Any], dict[str, Any]],
        context: dict[str, Any],
        *,
        workers: int = 1,
        progress: Progress | None = None,
        describe: Callable[[dict[str, Any]], str] = lambda record: "done",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.out, self.run_job, self.context = Path(out), run, context
        self.workers, self.progress, self.describe = workers, progress, describe
        self.total = 0
        self.done = 0
        self.rank, self.world = distributed()
        self.pool: cf.ProcessPoolExecutor | None = None

    def key(self, job: Job) -> str:
        payload = {
            "version": __version__,
            "torch": torch.__version__.split("+")[0],
            "context": self.context,
            "job": asdict(job) if is_dataclass(job) else repr(job),  # type: ignore[arg-type]
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, job: Job) -> Path:
        return self.out / "runs" / f"{job.name}.json"

    def _load(self, job: Job) -> dict[str, Any] | None:
        record = None
        if self.rank == 0:
            try:
                loaded = json.loads(self.path(job).read_text())
            except (OSError, ValueError):
                loaded = None
            if isinstance(loaded, dict) and loaded.get("key") == self.key(job):
                record = loaded
        if self.world > 1:  # rank 0 decides, so every rank runs the same jobs
            box = [record]
            torch.distributed.broadcast_object_list(box, src=0)
            record = box[0]
        return record

    def _finished(self, job: Job, record: dict[str, Any], cached: bool) -> dict[str, Any]:
        record = {**record, "key": self.key(job)}
        if not cached and self.rank == 0:
            atomic_write_text(self.path(job), json.dumps(record, indent=1, default=str))
        self.done += 1
        if self.progress is not None:
            note = " (cached)" if cached else ""
            self.progress(self.done, self.total, f"{job.name}: {self.describe(record)}{note}")
        return record

    def expect(self, count: int) -> None:
        """Announce ``count`` more jobs (the progress total), and report the start."""
        self.total += count
        if self.progress is not None and self.done == 0:
            self.progress(0, self.total, f"{self.total} runs to do or load")

    def run(self, jobs: Iterable[Job]) -> dict[Any, dict[str, Any]]:
        """Run (or load) every job; returns ``{job: record}`` in the order given."""
        jobs = list(jobs)
        results: dict[Any, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            cached = self._load(job)
            if cached is not None:
                results[job] = self._finished(job, cached, cached=True)
            else:
                todo.append(job)
        if self.workers <= 1 or self.world > 1 or len(todo) <= 1:
            for job in todo:
                results[job] = self._finished(job, self.run_job(job), cached=False)
        else:
            pool = self._pool()
            futures = {pool.submit(_worker_run, job): job for job in todo}
            try:
                for future in cf.as_completed(futures):
                    job = futures[future]
                    results[job] = self._finished(job, future.result(), cached=False)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return {job: results[job] for job in jobs}

    def _pool(self) -> cf.ProcessPoolExecutor:
        if self.pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self.pool = cf.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self.run_job, threads),
            )
        return self.pool

    def close(self) -> None:
        """Stop the worker processes (cancelling what has not started)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class MethodSeed:
    """The job of experiments that compare methods over seeds."""

    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"


def run_method_seeds(
    out: str | Path,
    run: Callable[[MethodSeed], dict[str, Any]],
    methods: Iterable[str],
    seeds: int,
    context: dict[str, Any],
    *,
    workers: int = 1,
    progress: Progress | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run every (method, seed) through :class:`Jobs`; ``{method: [record per seed]}``."""
    methods = tuple(methods)
    jobs = [MethodSeed(m, s) for m in methods for s in range(seeds)]
    with Jobs(out, run, context, workers=workers, progress=progress) as runner:
        runner.expect(len(jobs))
        done = runner.run(jobs)
    return {m: [done[j] for j in jobs if j.method == m] for m in methods}
