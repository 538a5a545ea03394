"""Executors: run an audit's cells and yield each outcome as it finishes — in this process, a local process
pool, or a Ray cluster.

An executor has ``run(cells, job)`` (an iterator of :func:`segaudit.cells.run_cell` outcomes), ``in_process`` (inner
progress bars are only shown in this process) and is a context manager that releases its workers. The driver
(:mod:`segaudit.audit`) alone writes the results store.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from .cells import run_cell
from .errors import SegauditError

EXECUTORS = ("sequential", "local", "ray")


def make_executor(name: str, *, max_parallel: int | None = None, address: str | None = None,
                  threads: int | None = None):
    """The executor called ``name`` (see :data:`EXECUTORS`)."""
    if max_parallel is not None and max_parallel < 1:
        raise SegauditError(f"--max-parallel must be at least 1, got {max_parallel}")
    if threads is not None and threads < 1:
        raise SegauditError(f"threads per cell must be at least 1, got {threads}")
    if address and name != "ray":
        raise SegauditError(f"--address is for the ray executor; add --executor ray (got --executor {name})")
    if name == "sequential":
        return SequentialExecutor()
    if name == "local":
        return LocalExecutor(max_parallel, threads=threads)
    if name == "ray":
        return RayExecutor(address=address, max_parallel=max_parallel, threads=threads)
    raise SegauditError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")


class SequentialExecutor:
    """The cells one after another in this process (``segaudit audit``): inner progress bars, no pickling."""

    in_process = True

    def run(self, cells: list, job) -> Iterator[dict]:
        for cell in cells:
            yield run_cell(cell, job)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _init_worker(threads: int) -> None:
    os.environ["SEGAUDIT_QUIET"] = "1"
    torch.set_num_threads(threads)


class LocalExecutor:
    """A pool of ``max_parallel`` worker processes on this machine (spawn: no state inherited from the driver).

    Each worker runs ``threads`` torch threads (default: cores // workers, at least 1) and keeps its dataset
    and models loaded between cells.
    """

    in_process = False

    def __init__(self, max_parallel: int | None = None, threads: int | None = None):
        cores = os.cpu_count() or 1
        self.max_parallel = max_parallel or cores
        self.threads = threads or max(1, cores // self.max_parallel)
        self._pool = None
        self._other_children: set = set()  # this process's children before the pool started (not its workers)

    def run(self, cells: list, job) -> Iterator[dict]:
        if not cells:
            return
        pool = self.start()
        futures = {pool.submit(run_cell, cell, job) for cell in cells}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in futures:
                f.cancel()

    @property
    def started(self) -> bool:
        """Whether the worker processes are running (they start on the first cell)."""
        return self._pool is not None

    def start(self) -> ProcessPoolExecutor:
        """The worker pool, started on first use."""
        if self._pool is None:
            self._other_children = set(multiprocessing.active_children())
            self._pool = ProcessPoolExecutor(self.max_parallel, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def _workers(self) -> list[multiprocessing.process.BaseProcess]:
        """The pool's worker processes: this process's children started since the pool was."""
        return [p for p in multiprocessing.active_children() if p not in self._other_children]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if self._pool is not None:
            if exc_type is not None:  # Ctrl-C or an error: drop queued cells, stop running ones (results unwritten)
                for process in self._workers():
                    process.terminate()
            self._pool.shutdown(wait=exc_type is None, cancel_futures=True)
            self._pool = None
        return False


def _ray():
    try:
        import ray
    except ImportError:
        raise SegauditError("the ray executor needs Ray: pip install 'segaudit[ray]'") from None
    return ray


def _ray_cell(cell, job, model_files, threads):
    os.environ["SEGAUDIT_QUIET"] = "1"
    torch.set_num_threads(threads)
    return run_cell(cell, job, model_files)


class RayExecutor:
    """Cells as Ray tasks on an existing cluster (``address``) or a local Ray instance started here.

    The driver ships each model folder once through Ray's object store and writes every result itself, so
    workers need segaudit installed and the data folder at the same path — not the audit's output folder.

    Args:
        address: ``"auto"``, ``"HOST:6379"`` or ``"ray://HOST:10001"``; none starts a local instance
            (``num_cpus`` of them, no dashboard) that :meth:`__exit__` shuts down.
        max_parallel: cells in flight at once (default: the cluster's CPUs / ``threads``).
        threads: CPUs (and torch threads) per cell (default 1).
    """

    in_process = False

    def __init__(self, address: str | None = None, max_parallel: int | None = None, threads: int | None = None,
                 num_cpus: int | None = None):
        self.address, self.threads, self.num_cpus = address, threads or 1, num_cpus
        self.max_parallel = max_parallel
        self._ray, self._started, self._task = None, False, None

    def start(self):
        """The ``ray`` module, connected (or a local instance started) on first use."""
        if self._ray is not None:
            return self._ray
        ray = _ray()
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if self.address:
                kw["address"] = self.address
            else:
                kw["num_cpus"] = self.num_cpus or self.max_parallel or os.cpu_count() or 1
            try:
                ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                text = " ".join(str(e).split())[:200]
                raise SegauditError(f"cannot reach the Ray cluster {self.address or '(local)'}: {text}; start one "
                                    "with 'ray start --head' or drop --address for a local instance") from None
            self._started = True
        self._ray = ray
        self._task = ray.remote(num_cpus=self.threads, max_retries=0)(_ray_cell)
        if self.max_parallel is None:
            self.max_parallel = max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
        return ray

    def run(self, cells: list, job) -> Iterator[dict]:
        if not cells:
            return
        ray = self.start()
        shipped = {name: ray.put(_folder_files(path)) for name, path in job.models.items()
                   if Path(path).is_dir()}
        queue, running = list(cells), {}
        try:
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    cell = queue.pop(0)
                    ref = self._task.remote(cell, job, shipped.get(cell.settings["model"]), self.threads)
                    running[ref] = cell
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    cell = running.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as e:  # a lost worker or node: recorded like a failed cell
                        text = " ".join(str(e).split())[:300]
                        yield {"key": cell.key, "kind": cell.kind, "settings": cell.settings, "seconds": 0.0,
                               "result": {"status": "failed", "error": f"{type(e).__name__}: {text}"}}
        finally:
            for ref in running:
                ray.cancel(ref, force=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False
        return False


def _folder_files(path: str | Path) -> dict[str, bytes]:
    """The files at the top of a model folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}
