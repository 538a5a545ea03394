"""Sweeps: an audit's cells run by an executor — in this process, a local process pool, or a Ray cluster.

An audit is a plan of independent cells (:func:`segaudit.audit.plan_cells`); an executor runs them and yields
each outcome as it finishes; the driver alone writes the results store (one writer), so a sweep resumes,
records a failed cell with its one-line error and goes on, and Ctrl-C leaves only whole rows. Every cell
seeds itself from its settings, so all executors give identical results for the same config (at the same
number of threads per cell: float sums may differ in the last bit when a cell's threads differ).

The executors live in :mod:`segaudit.executors` (re-exported here).

Example:
    >>> from segaudit import sweep
    >>> from segaudit.config import AuditConfig
    >>> result = sweep.run(AuditConfig.from_yaml("grid.yaml"), "reports/grid", executor="local", max_parallel=2)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .audit import run as run_audit
from .executors import EXECUTORS, LocalExecutor, RayExecutor, SequentialExecutor, make_executor

__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "SequentialExecutor", "make_executor", "run"]


def run(config, out: str | Path, *, executor: str = "local", max_parallel: int | None = None,
        address: str | None = None, threads: int | None = None, **audit_kw: Any):
    """Run (or resume) the audit ``config`` in ``out`` on an executor; same store, results and report as an audit.

    Args:
        executor: ``"local"`` (a process pool, the default), ``"ray"`` (``pip install 'segaudit[ray]'``) or
            ``"sequential"`` (this process, as ``segaudit audit``).
        max_parallel: cells running at once (default: the CPU cores here, or all the Ray cluster schedules).
        address: a Ray cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); none starts a local one.
        threads: torch threads per cell (default: cores / ``max_parallel`` locally, 1 on Ray).
        audit_kw: ``force``, ``redact``, ``progress``, ``command``, ``log`` of :func:`segaudit.audit.run`.

    A sweep extends the grid of the store in ``out`` (``extend=True`` of :func:`segaudit.audit.run`): a rerun
    with more seeds or batch sizes runs only the new cells; other data or another model is still refused.
    """
    with make_executor(executor, max_parallel=max_parallel, address=address, threads=threads) as ex:
        return run_audit(config, out, executor=ex, **{"extend": True, **audit_kw})
