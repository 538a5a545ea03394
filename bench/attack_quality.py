"""What the `seg` attack learns beyond the attacker's baseline, over image kinds and realistic clients: one table.

Axes (comma lists): image kinds (`--data`: bundled names or folders, e.g. the development set `data/dev/*`),
model state (untrained / trained: `train_model`, 300 steps), client mode (eval / train), protocol (FedSGD /
FedAvg with `--local-steps` steps at lr 0.01), batch size and image size. Each row attacks `--images` held-out
client batches and shows means over them: the baseline PSNR (`segaudit.metrics.score`: the better of the flat
image at the true per-channel mean and the attacker's prior image), the PSNR and its gain, the SSIM gain, the
mask Dice with its baseline, the re-identification rate among the data's other crops (chance about 1/32 or
less), and seconds per attack. The attacker never sees the batch. Threads: `torch.set_num_threads(--threads)`,
default 1 (pin OMP_NUM_THREADS as well).

The malicious-server worst case: `--attack imprint` (steps = its mask solver's iterations; an exact image scores
about 150 dB, float32 rounding).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/attack_quality.py [--data nuclei,data/dev/fundus] [--states untrained]
     [--client-modes eval] [--modes fedsgd] [--batches 1] [--sizes 64] [--steps 200] [--restarts 1] [--images 3]
"""
import argparse
import time

import numpy as np
import torch

from segaudit.attacks.knowledge import attacker_data
from segaudit.attacks.runner import attack_batch
from segaudit.data import load_dataset, make_batch, split
from segaudit.metrics import pooled_identification
from segaudit.models import build_model
from segaudit.preprocessing import normalisation
from segaudit.train import train_model

COLUMNS = ("baseline dB", "PSNR dB", "gain dB", "SSIM gain", "mask Dice (base)", "identified", "s / attack")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="nuclei,brain_mri")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--attack", default="seg", help="seg (honest-but-curious server) or imprint (malicious server)")
    ap.add_argument("--states", default="untrained,trained")
    ap.add_argument("--client-modes", default="eval,train")
    ap.add_argument("--modes", default="fedsgd,fedavg")
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--sizes", default="64")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--images", type=int, default=3, help="client batches per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = args.arch if args.arch.lower().startswith("monai.") else f"{args.arch}-resnet18"
    print(f"{args.attack} attack, {args.steps} steps x {args.restarts} restart(s), {net}, "
          f"{args.images} client batches per row, {torch.get_num_threads()} thread(s)")
    print("| data | weights | client | protocol | batch | px | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (6 + len(COLUMNS)))
    for name in args.data.split(","):
        data = load_dataset(name)
        _, heldout = split(data, seed=args.seed)
        for state in args.states.split(","):
            torch.manual_seed(args.seed)
            model = build_model(args.arch, in_channels=data.channels, classes=data.num_classes)
            if state == "trained":
                trained = train_model(model, data, size=64, steps=300, seed=args.seed, progress=False)
                state = f"trained (Dice {trained.dice:.2f})"
            for size in map(int, args.sizes.split(",")):
                for client in args.client_modes.split(","):
                    for mode in args.modes.split(","):
                        for n in map(int, args.batches.split(",")):
                            row = attack_row(model, data, heldout, size, client, mode, n, args)
                            print(f"| {name.rstrip('/').split('/')[-1]} | {state} | {client} | "
                                  f"{mode if mode == 'fedsgd' else f'fedavg K={args.local_steps}'} | {n} | {size} | "
                                  f"{row} |", flush=True)


def attack_row(model, data, heldout, size, client, mode, n, args) -> str:
    """Attack ``args.images`` batches of ``n`` held-out crops; the row's cells as text."""
    norm = normalisation(model)
    metrics, found, seconds = [], [], []
    for image in range(args.images):
        idx = [heldout[(image * n + i) % len(heldout)] for i in range(n)]
        batch = make_batch(data, idx, size=size, fit="crop", seed=args.seed + image, **norm)
        knowledge = attacker_data(data, batch, size, fit="crop", norm=norm, seed=args.seed + image)
        start = time.perf_counter()
        try:
            out = attack_batch(model, batch, args.attack, mode=mode,
                               local_steps=args.local_steps if mode == "fedavg" else 1,
                               train_mode=client == "train", knowledge=knowledge, steps=args.steps,
                               restarts=args.restarts, seed=args.seed + image)
        except ValueError as e:  # a setting no client can run (SegauditError / NotApplicable)
            return " | ".join(["n/a"] * (len(COLUMNS) - 1)) + f" | {e}"[:80]
        seconds.append(time.perf_counter() - start)
        metrics.append(out.metrics)
        found.append(out.identification)
    mean = {k: _mean([m[k] for m in metrics]) for k in metrics[0]}
    ident = pooled_identification(found)["identification"]
    return " | ".join([
        _fmt(mean["baseline_psnr"], ".1f"), _fmt(mean["psnr"], ".1f"), _fmt(mean["psnr_gain"], "+.1f"),
        _fmt(mean["ssim_gain"], "+.2f"),
        f"{_fmt(mean['mask_dice'], '.2f')} ({_fmt(mean['baseline_mask_dice'], '.2f')})",
        "n/a" if ident is None else f"{ident['rate']:.0%} of {ident['n']}", f"{np.mean(seconds):.0f}"])


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
