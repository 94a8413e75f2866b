"""Resumable, parallel runs: every experiment's runs go through :class:`Jobs`.

A job is any frozen dataclass with a ``name``; running it returns a typed record (a frozen
dataclass, :mod:`.records`). Each record is written atomically to ``<out>/runs/<name>.json``
under a key hashing everything that determines it, the number of torch threads included; a
rerun reuses a file only if its key matches and its record is complete and valid, so an
interruption loses only the jobs in flight and a changed configuration never reuses stale
results. Every job runs with the same number of torch threads whether it runs in this process or
in a worker (a run's numbers depend on it: reductions split differently). Worker processes exit
when the main process dies, even by ``SIGKILL``. Under ``torch.distributed`` every rank runs
every job (the job itself is distributed) and rank 0 writes.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch

import weightnorm

from ._io import atomic_write_text
from .records import RecordError, from_json, to_json

__all__ = [
    "Job",
    "Jobs",
    "MethodSeed",
    "Progress",
    "distributed",
    "run_method_seeds",
    "torch_threads",
]

Progress = Callable[[int, int, str], None]
R = TypeVar("R")


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


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    while True:  # a killed parent leaves us with another parent (init or a subreaper)
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _worker_init(run: Callable[[Any], Any], threads: int, parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    _WORKER["run"] = run


def _worker_run(job: Any) -> Any:
    return _WORKER["run"](job)


class Jobs(Generic[R]):
    """Run jobs in this process or in ``workers`` spawned processes, keeping every result.

    Args:
        out: the experiment's folder (records go to ``out/runs``).
        run: ``run(job) -> record``; picklable when ``workers > 1`` (it is sent once per worker).
        record_type: the records' dataclass (a stored file is reused only if it parses as one).
        context: everything besides the job that determines a record (settings, data
            fingerprint, architecture); hashed into each record's key with the library version,
            the torch version and ``threads``.
        workers: parallel processes.
        threads: torch threads of every run, in this process or a worker.
        progress: ``progress(done, total, message)`` after each job.
        describe: a short status of a finished record for the progress message.
    """

    def __init__(
        self,
        out: str | Path,
        run: Callable[[Any], R],
        record_type: type[R],
        context: dict[str, Any],
        *,
        workers: int = 1,
        threads: int = 1,
        progress: Progress | None = None,
        describe: Callable[[R], str] = lambda record: "done",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.out, self.run_job, self.record_type = Path(out), run, record_type
        self.context, self.workers, self.threads = context, workers, threads
        self.progress, self.describe = progress, describe
        self.total = 0
        self.done = 0
        self.cached = 0  # of the done ones, reused from an earlier execution
        self.rank, self.world = distributed()
        self.pool: cf.ProcessPoolExecutor | None = None

    def key(self, job: Job) -> str:
        """The hash of everything that determines ``job``'s record."""
        payload = {
            "version": weightnorm.__version__,
            "torch": torch.__version__.split("+")[0],
            "threads": self.threads,
            "context": self.context,
            "job": asdict(job),  # type: ignore[call-overload]
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, job: Job) -> Path:
        """Where ``job``'s record is kept."""
        return self.out / "runs" / f"{job.name}.json"

    def _load(self, job: Job) -> R | None:
        record = None
        if self.rank == 0:
            try:
                stored = json.loads(self.path(job).read_text())
                if isinstance(stored, dict) and stored.get("key") == self.key(job):
                    record = from_json(self.record_type, stored.get("record"))
            except (OSError, ValueError, RecordError):  # absent, cut short, stale or edited
                record = None
        if self.world > 1:  # rank 0 decides, so every rank runs the same jobs
            box = [record]
            torch.distributed.broadcast_object_list(box, src=0)
            record = box[0]
        return record

    def _finished(self, job: Job, record: R, cached: bool) -> R:
        if not cached and self.rank == 0:
            stored = {"key": self.key(job), "record": to_json(record)}
            atomic_write_text(self.path(job), json.dumps(stored, indent=1))
        self.done += 1
        self.cached += cached
        if self.progress is not None:
            note = " (cached)" if cached else ""
            self.progress(self.done, self.total, f"{job.name}: {self.describe(record)}{note}")
        return record

    def expect(self, count: int) -> None:
        """Announce ``count`` more jobs (the progress total), and report the start."""
        self.total += count
        if self.progress is not None and self.done == 0:
            self.progress(0, self.total, f"{self.total} runs to do or load")

    def run(self, jobs: Iterable[Job]) -> dict[Any, R]:
        """Run (or load) every job; returns ``{job: record}`` in the order given."""
        jobs = list(jobs)
        results: dict[Any, R] = {}
        todo = []
        for job in jobs:
            cached = self._load(job)
            if cached is not None:
                results[job] = self._finished(job, cached, cached=True)
            else:
                todo.append(job)
        if self.workers <= 1 or self.world > 1 or len(todo) <= 1:
            with torch_threads(self.threads):
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
            self.pool = cf.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self.run_job, self.threads, os.getpid()),
            )
        return self.pool

    def close(self) -> None:
        """Stop the worker processes (cancelling what has not started)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Jobs[R]:
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
    run: Callable[[MethodSeed], R],
    record_type: type[R],
    methods: Iterable[str],
    seeds: int,
    context: dict[str, Any],
    *,
    workers: int = 1,
    threads: int = 1,
    progress: Progress | None = None,
) -> dict[str, list[R]]:
    """Run every (method, seed) through :class:`Jobs`; ``{method: [record per seed]}``."""
    methods = tuple(methods)
    jobs = [MethodSeed(m, s) for m in methods for s in range(seeds)]
    with Jobs(
        out, run, record_type, context, workers=workers, threads=threads, progress=progress
    ) as runner:
        runner.expect(len(jobs))
        done = runner.run(jobs)
    return {m: [done[j] for j in jobs if j.method == m] for m in methods}
