"""Reconstruction quality of the `seg` attack on the bundled nuclei data, 64 px, one table in one run.

Rows: Unet, DeepLabV3Plus, FPN (resnet18) x untrained / trained (`train_model`, 300 steps) x FedSGD / FedAvg
(4 local steps, lr 0.01) x batch 1 / 4. Cells: PSNR, SSIM, mask Dice (mean over the batch after one-to-one
matching) and seconds. The client runs the model in eval mode unless --client-mode train.

Run: .venv/bin/python bench/attack_quality.py [--steps 500] [--restarts 8] [--archs unet,deeplabv3plus,fpn] [--batches 1,4]
"""
import argparse
import time

import torch

from segaudit.attacks.runner import attack_batch
from segaudit.data import load_dataset, make_batch, split
from segaudit.models import build_model
from segaudit.train import train_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--archs", default="unet,deeplabv3plus,fpn")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--modes", default="fedsgd,fedavg")
    ap.add_argument("--states", default="untrained,trained")
    ap.add_argument("--client-mode", choices=("eval", "train"), default="eval")
    ap.add_argument("--restarts", type=int, default=1, help="restarts, optimised together; the result is their pixel-wise median")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = load_dataset("nuclei")
    _, heldout = split(data, seed=0)
    print(f"seg attack, {args.steps} steps, {args.restarts} restart(s), client in {args.client_mode} mode, {torch.get_num_threads()} threads")
    print("| arch | weights | mode | batch | PSNR dB | SSIM | mask Dice | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for state in args.states.split(","):
            torch.manual_seed(args.seed)
            model = build_model(arch, in_channels=1, classes=2)
            if state == "trained":
                train_model(model, data, size=64, steps=300, seed=args.seed, progress=False)
            for mode in args.modes.split(","):
                for n in map(int, args.batches.split(",")):
                    batch = make_batch(data, [heldout[i % len(heldout)] for i in range(n)], size=64, fit="crop",
                                       seed=args.seed)
                    start = time.perf_counter()
                    out = attack_batch(model, batch, "seg", mode=mode, local_steps=4 if mode == "fedavg" else 1,
                                       train_mode=args.client_mode == "train", steps=args.steps, restarts=args.restarts, seed=args.seed)
                    m = out.metrics
                    fmt = lambda v, f: format(v, f) if v is not None else "n/a"  # noqa: E731
                    print(f"| {arch} | {state} | {mode} | {n} | {fmt(m['psnr'], '.1f')} | {fmt(m['ssim'], '.3f')} | "
                          f"{fmt(m['mask_dice'], '.3f')} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
