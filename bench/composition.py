"""Error of the analytic class-composition recovery (head-bias gradient), by batch size.

For each batch size, random 64 px nuclei crops form client batches; the attacker estimates each class's pixel
share from the FedSGD update with `estimate_composition`, using either its default smooth probe images or
auxiliary crops from the training split (public data of the same kind, disjoint from the held-out targets).
Prints the mean absolute error of the per-class shares (target <= 0.01 for batches 1-32, untrained model).

Run: .venv/bin/python bench/composition.py [--trials 8] [--trained]
"""
import argparse

import torch

from segaudit.attacks.recovery import estimate_composition
from segaudit.data import load_dataset, make_batch, split
from segaudit.fl import client_update
from segaudit.models import build_model
from segaudit.train import train_model
from segaudit.types import Prior


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--trained", action="store_true")
    ap.add_argument("--client-mode", choices=("train", "eval"), default="train")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("nuclei")
    train_idx, held = split(data, seed=0)
    model = build_model("unet", in_channels=1, classes=2)
    if args.trained:
        train_model(model, data, steps=300, progress=False)
    train_mode = args.client_mode == "train"
    print(f"composition MAE, {'trained' if args.trained else 'untrained'} Unet-resnet18, client in "
          f"{args.client_mode} mode, {args.trials} batches per size")
    print("| batch | probe images | auxiliary crops |")
    print("|---|---|---|")
    for n in map(int, args.batches.split(",")):
        errors = {"probe": [], "aux": []}
        for t in range(args.trials):
            batch = make_batch(data, [held[(t + i) % len(held)] for i in range(n)], size=64, fit="crop",
                               seed=1000 * n + t)
            truth = torch.bincount(batch.masks.flatten(), minlength=2).double() / batch.masks.numel()
            update = client_update(model, batch, train_mode=train_mode)
            aux = make_batch(data, [train_idx[(t + i) % len(train_idx)] for i in range(max(n, 2))], size=64,
                             fit="crop", seed=t).images
            for name, ref in (("probe", None), ("aux", aux)):
                prior = Prior.from_batch_shape(batch, public_images=ref)
                est = estimate_composition(model, update, prior).double()
                errors[name].append(float((est - truth).abs().mean()))
        mean = {k: sum(v) / len(v) for k, v in errors.items()}
        print(f"| {n} | {mean['probe']:.4f} | {mean['aux']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
