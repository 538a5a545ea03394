"""Inference attacks by batch size: composition MAE (analytic vs calibrated), property AUC (composition score
and shadow-model classifier), membership AUC, and the wall time of `segaudit infer` (200 updates, batch 8).

Targets (issue 4): composition MAE <= 0.01 for batches 1-32 on an untrained Unet; property AUC >= 0.95 at
batch 8; `segaudit infer` with 200 updates at batch 8, 64 px in <= 2 CPU minutes.

Run: .venv/bin/python bench/inference.py [--updates 60] [--batches 1,4,8,16,32] [--trained] [--client-mode eval]
"""
import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--batches", default="1,4,8,16,32")
    ap.add_argument("--property", default="nucleus>median")
    ap.add_argument("--trained", action="store_true")
    ap.add_argument("--client-mode", choices=("train", "eval"), default="eval")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
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
    if args.skip_timing:
        return
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
