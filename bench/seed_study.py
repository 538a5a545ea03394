"""The DLG study the project's sources describe, reproduced: how fast does DLG reconstruct one image
from the gradient of randomly initialised, sigmoid classifiers of growing size?

Setup as in the source: L-BFGS (lr 1, history 100, max 20 evaluations per step), every ReLU replaced by a
sigmoid, random weights, batch 1; LeNet at 32 px with images in [0, 1]; ResNet-18 and DenseNet-121 at
224 px and Inception-v3 at 299 px, ImageNet-normalised. Images: a bundled nuclei tile, replicated to RGB.
Prints image MSE (in [0, 1]) at chosen steps and saves the curves to --out (PNG + JSON).
The source claims: LeNet converges quickly; ResNet-18 needs > 300 steps and ends an order of magnitude above
LeNet; DenseNet-121 converges in ~50 steps; Inception-v3 does not converge in 300 steps (and its BatchNorm
needs 2 images per batch in train mode — we run it in eval mode with batch 1 and say so).

Run: .venv/bin/python bench/seed_study.py [--steps 300] [--big-steps 20]
     [--archs lenet,resnet18,densenet121,inception_v3]
The large models cost ~20 forward + double-backward passes per step at 224-299 px: on 2 CPU cores keep
--big-steps small; the full 300-step study belongs on a GPU.
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segaudit.attacks.inversion import DLG
from segaudit.data import load_dataset
from segaudit.fl import client_update
from segaudit.io import write_json
from segaudit.metrics import denormalize
from segaudit.models import build_model
from segaudit.report.plots import pyplot
from segaudit.types import Batch, Prior

SIZES = {"lenet": 32, "resnet18": 224, "densenet121": 224, "inception_v3": 299}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def client_image(arch: str) -> Batch:
    tile = torch.tensor(load_dataset("nuclei")[5][0]).permute(2, 0, 1)[None]  # [1,1,128,128] in [0,1]
    size = SIZES[arch]
    rgb = F.interpolate(tile, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1).clamp(0, 1)
    mean, std = ((0.0,) * 3, (1.0,) * 3) if arch == "lenet" else IMAGENET
    norm = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return Batch(norm, torch.tensor([3]), tuple(f"c{i}" for i in range(10)), ("tile",), mean, std)


def run(arch: str, steps: int, seed: int, restarts: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(arch, in_channels=3, classes=10, activation="sigmoid")
    batch = client_image(arch)
    train_mode = arch == "lenet"  # BatchNorm nets in eval mode: one image per batch (see docstring)
    update = client_update(model, batch, train_mode=train_mode)
    truth = denormalize(batch.images, batch.mean, batch.std)
    curves: list[list[float]] = []
    start = time.perf_counter()

    def record(step, images):
        if step == 0:
            curves.append([])
        curves[-1].append(float((denormalize(images, batch.mean, batch.std) - truth).pow(2).mean()))

    attack = DLG(steps=steps, seed=seed, restarts=restarts, callback=record)
    rec = attack.run(model, update, Prior.from_batch_shape(batch))
    best = min(range(len(curves)),
               key=lambda i: rec.restart_losses[i] if rec.restart_losses[i] == rec.restart_losses[i] else float("inf"))
    return {"arch": arch, "size": SIZES[arch], "steps": steps, "restarts": restarts,
            "seconds": time.perf_counter() - start, "params": sum(p.numel() for p in model.parameters()),
            "mse": curves[best], "final_mse_per_restart": [c[-1] for c in curves],
            "matching_loss_per_restart": rec.restart_losses}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="L-BFGS steps for LeNet")
    ap.add_argument("--big-steps", type=int, default=20, help="L-BFGS steps for the 224/299 px models")
    ap.add_argument("--archs", default="lenet,resnet18,densenet121,inception_v3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--restarts", type=int, default=4,
                    help="DLG restarts; the curve shown is the one with the lowest matching loss")
    ap.add_argument("--out", default="reports/bench/seed_study")
    args = ap.parse_args()
    rows = [run(a, args.steps if a == "lenet" else args.big_steps, args.seed, args.restarts)
            for a in args.archs.split(",")]
    print(f"DLG, best of {args.restarts} restarts by matching loss (no ground truth used to choose)")
    print("| model | px | parameters | steps | MSE@10 | MSE@50 | final MSE | restarts below 1e-3 | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")

    def at(mse, k):
        return f"{mse[k - 1]:.2e}" if len(mse) >= k else "n/a"

    for r in rows:
        print(f"| {r['arch']} | {r['size']} | {r['params']:,} | {r['steps']} | {at(r['mse'], 10)} | "
              f"{at(r['mse'], 50)} | {r['mse'][-1]:.2e} | "
              f"{sum(m < 1e-3 for m in r['final_mse_per_restart'])}/{r['restarts']} | {r['seconds']:.0f} |")
    out = Path(args.out)
    write_json(out / "seed_study.json", rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        ax.semilogy(range(1, len(r["mse"]) + 1), r["mse"], label=r["arch"])
    ax.set_xlabel("L-BFGS step")
    ax.set_ylabel("image MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "seed_study.png", dpi=100)
    print(f"curves: {out / 'seed_study.png'}")


if __name__ == "__main__":
    main()
