"""Sweep throughput: cells per minute on this machine with the local executor at 1 and 2 workers, the same on a
local Ray instance, Ray's overhead per cell over the local pool, and the cost of one cell on one core — the
figure a 1,000-cell audit on N machines is extrapolated from (docs/audit.md, "Sweeps").

The grid: one trained U-Net-resnet18 (trained once, outside the timings), ``--cells`` attack cells
(seeds x 1 image, batch 1, FedSGD, ``--steps`` inversion steps at ``--size`` px). Every run audits the saved
checkpoint into a fresh folder, so only its evaluation (seconds) and the attack cells are timed; wall time
includes starting the pool or Ray.

Run: .venv/bin/python bench/sweep_scaling.py [--cells 8] [--size 64] [--steps 30] [--json out.json]
"""
import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from segaudit import audit, sweep
from segaudit.config import AuditConfig, ModelConfig
from segaudit.data import load_dataset
from segaudit.models import build_model, save_model
from segaudit.train import train_model


def config(args, model: Path) -> AuditConfig:
    return AuditConfig(name="scaling", size=args.size, models=(ModelConfig("unet", checkpoint=str(model)),),
                       attack_steps=args.steps, batch_sizes=(1,), seeds=tuple(range(args.cells)), images=1,
                       defenses=("none",), inference=(), layers=False)


def timed(args, model: Path, name: str, make) -> dict:
    out = model.parent / name
    with make() as ex:
        start = time.perf_counter()
        audit.run(config(args, model), out, progress=False, executor=ex)
        wall = time.perf_counter() - start
    db = sqlite3.connect(out / "results.sqlite")
    cell_s = [s for (s,) in db.execute("SELECT seconds FROM runs WHERE kind = 'attack'")]
    db.close()
    row = {"executor": name, "cells": len(cell_s), "wall_s": round(wall, 2),
           "cells_per_min": round(60 * len(cell_s) / wall, 2), "mean_cell_s": round(sum(cell_s) / len(cell_s), 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="attack steps per cell")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="segaudit-scaling-"))
    try:
        base = root / "model"  # trained once; every executor audits this checkpoint into its own folder
        torch.manual_seed(0)
        data = load_dataset("nuclei")
        model = build_model("unet", in_channels=data.channels, classes=data.num_classes)
        save_model(train_model(model, data, size=args.size, steps=args.train_steps, progress=False).model, base)
        rows = [timed(args, base, "sequential", sweep.SequentialExecutor)]
        rows.append(timed(args, base, "local-1", lambda: sweep.LocalExecutor(1)))
        rows.append(timed(args, base, "local-2", lambda: sweep.LocalExecutor(2)))
        if not args.no_ray:
            start = time.perf_counter()
            with sweep.RayExecutor(max_parallel=2, num_cpus=2) as ex:
                ex._start()
                ray_init = time.perf_counter() - start
            rows.append(timed(args, base, "ray-2", lambda: sweep.RayExecutor(max_parallel=2, num_cpus=2)))
        by = {r["executor"]: r for r in rows}
        summary = {"cores": cores, "torch_threads_sequential": torch.get_num_threads(), "cells": args.cells,
                   "size": args.size, "attack_steps": args.steps, "rows": rows,
                   "speedup_2_over_1_workers": round(by["local-1"]["wall_s"] / by["local-2"]["wall_s"], 2),
                   # one core's work per cell: 2 workers x wall / cells (both cores busy throughout)
                   "core_s_per_cell": round(2 * by["local-2"]["wall_s"] / args.cells, 2)}
        if "ray-2" in by:
            summary["ray_init_s"] = round(ray_init, 2)
            overhead = (by["ray-2"]["wall_s"] - by["local-2"]["wall_s"]) / args.cells
            summary["ray_overhead_per_cell_s"] = round(overhead, 2)
        print(json.dumps(summary, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
