"""Inference attacks by batch size: composition MAE (analytic vs calibrated), property AUC (composition score
and shadow-model classifier), membership AUC, and the wall time of `segaudit infer` (200 updates, batch 8).

Targets (issue 4): composition MAE <= 0.01 for batches 1-32 on an untrained Unet; property AUC >= 0.95 at
batch 8; `segaudit infer` with 200 updates at batch 8, 64 px in <= 2 CPU minutes.

Memory ("Audit integrity", finding 5): peak resident memory of `run_inference` (composition, property,
membership) with 200 and 1,000 target updates (+ as many shadow updates) at batch 8, 64 px, untrained
Unet-resnet18, nuclei. Each case runs in a fresh subprocess and reports its own `resource.getrusage` peak
(`ru_maxrss`), so one case cannot hide another; "baseline" is that process's peak after importing segaudit and
building the model, before any update. Target: <= 2 GiB at 200 updates (the pre-streaming code kept every
update, ~57 MB each, and was killed at 23.5 GB). Threads: every memory subprocess is pinned to `--threads`
(default 1) with OMP_NUM_THREADS=N in its environment and torch.set_num_threads(N); the table prints both.
The accuracy and timing tables keep torch's default thread count (printed with the timing).

Run: .venv/bin/python bench/inference.py [--updates 60] [--batches 1,4,8,16,32] [--trained] [--client-mode eval]
     .venv/bin/python bench/inference.py --memory-only [--memory-updates 200,1000] [--threads 1]
     (--memory adds the memory table after the others)
"""
import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time

import torch

from segaudit.attacks.inference import run_inference
from segaudit.cli import main as cli
from segaudit.data import load_dataset
from segaudit.models import build_model, save_model
from segaudit.train import train_model


def fmt(value, ci=None):
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_case(attack: str, updates: int, threads: int, prop: str, client_mode: str) -> None:
    """One memory case, run in its own process: prints one JSON line with the peak RSS."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_dataset("nuclei")
    model = build_model("unet", in_channels=1, classes=2)
    baseline = peak_rss_mib()
    start = time.perf_counter()
    r = run_inference(model, data, attack, prop=None if attack == "membership" else prop, batch_size=8,
                      updates=updates, size=64, train_mode=client_mode == "train")
    print(json.dumps({"attack": attack, "updates": updates, "baseline_mib": baseline, "peak_mib": peak_rss_mib(),
                      "wall_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "auc": r.auc,
                      "composition_mae": r.composition_mae}))


def memory_table(args) -> None:
    """Run every (updates, attack) memory case in a fresh subprocess and print a markdown table."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "SEGAUDIT_QUIET": "1"}
    command = " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={args.threads}",
                                                 os.path.relpath(sys.executable), *sys.argv])
    print(f"\nPeak RSS of run_inference, untrained Unet-resnet18, nuclei 64 px, batch 8, FedSGD, client in "
          f"{args.client_mode} mode, N target + N shadow updates; one fresh process per row, pinned to "
          f"OMP_NUM_THREADS={args.threads} and torch.set_num_threads({args.threads}).\n$ {command}\n")
    print("| attack | updates N | baseline RSS (MiB) | peak RSS (MiB) | peak - baseline (MiB) | wall (s) "
          "| threads (torch / OMP) | <= 2 GiB |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for updates in map(int, args.memory_updates.split(",")):
        for attack in args.memory_attacks.split(","):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-case", f"{attack}:{updates}",
                                   "--threads", str(args.threads), "--property", args.property,
                                   "--client-mode", args.client_mode], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {attack} | {updates} | failed (exit {proc.returncode}): "
                      f"{(proc.stderr.strip().splitlines() or ['?'])[-1]} | | | | | |", flush=True)
                continue
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {attack} | {updates} | {m['baseline_mib']:.0f} | {m['peak_mib']:.0f} "
                  f"| {m['peak_mib'] - m['baseline_mib']:.0f} | {m['wall_s']:.0f} "
                  f"| {m['torch_threads']} / {m['omp_num_threads']} | {'yes' if m['peak_mib'] <= 2048 else 'NO'} |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--batches", default="1,4,8,16,32")
    ap.add_argument("--property", default="nucleus>median")
    ap.add_argument("--trained", action="store_true")
    ap.add_argument("--client-mode", choices=("train", "eval"), default="eval")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also print the peak-memory table")
    ap.add_argument("--memory-only", action="store_true", help="print only the peak-memory table")
    ap.add_argument("--memory-updates", default="200,1000", help="target updates per memory case")
    ap.add_argument("--memory-attacks", default="composition,property,membership")
    ap.add_argument("--threads", type=int, default=1, help="threads each memory subprocess is pinned to")
    ap.add_argument("--memory-case", help=argparse.SUPPRESS)  # ATTACK:UPDATES, the subprocess of one row
    args = ap.parse_args()
    if args.memory_case:
        attack, updates = args.memory_case.split(":")
        return memory_case(attack, int(updates), args.threads, args.property, args.client_mode)
    if args.memory_only:
        return memory_table(args)
    torch.manual_seed(0)
    data = load_dataset("nuclei")
    model = build_model("unet", in_channels=1, classes=2)
    if args.trained:
        train_model(model, data, steps=300, progress=False)
    protocol = {"train_mode": args.client_mode == "train"}
    print(f"{'trained' if args.trained else 'untrained'} Unet-resnet18, nuclei 64 px, client in {args.client_mode} "
          f"mode, FedSGD, {args.updates} target + {args.updates} shadow updates per cell; 95 % intervals in brackets")
    print("| batch | composition MAE analytic | calibrated | property AUC (composition) | property AUC (shadow "
          "classifier) | TPR@1%FPR | membership AUC | TPR@1%FPR |")
    print("|---|---|---|---|---|---|---|---|")
    for b in map(int, args.batches.split(",")):
        comp = run_inference(model, data, "composition", prop=args.property, batch_size=b, updates=args.updates,
                             **protocol)
        prop = run_inference(model, data, "property", prop=args.property, batch_size=b, updates=args.updates,
                             **protocol)
        member = run_inference(model, data, "membership", batch_size=b, updates=args.updates, **protocol)
        print(f"| {b} | {fmt(comp.composition_mae_analytic)} | {fmt(comp.composition_mae, comp.composition_mae_ci)} "
              f"| {fmt(comp.auc, comp.auc_ci)} | {fmt(prop.auc, prop.auc_ci)} | {fmt(prop.tpr_at_1pct_fpr)} "
              f"| {fmt(member.auc, member.auc_ci)} | {fmt(member.tpr_at_1pct_fpr)} |", flush=True)
    if not args.skip_timing:
        timing(model, args)
    if args.memory:
        memory_table(args)


def timing(model, args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, f"{tmp}/model")
        start = time.perf_counter()
        cli(["--quiet", "infer", "--model", f"{tmp}/model", "--data", "nuclei", "--attack", "composition",
             "--property", args.property, "--batch-size", "8", "--updates", "200", "--client-mode", args.client_mode,
             "--out", f"{tmp}/out"])
        print(f"segaudit infer, 200 target + 200 shadow updates, batch 8, 64 px: {time.perf_counter() - start:.0f} s "
              f"wall with {torch.get_num_threads()} threads (target <= 120 s)")


if __name__ == "__main__":
    main()
