"""DP-SGD training step vs a non-private step, measured in the same run (target: <= 2.0x).

Unet-resnet18, batch 8, 64 px, one channel, 2 classes. The non-private step is Adam on the GroupNorm
model Opacus trains (and, for reference, on the original BatchNorm model); the private step is the same
Adam step through Opacus's ``GradSampleModule`` + ``DPOptimizer`` (per-sample gradients, clipping to C,
Gaussian noise), for each per-sample gradient mode. Best of ``--repeats`` timed steps after 2 warm-up steps.

Run: ``python bench/dp_speed.py`` (uses the torch default thread count; set OMP_NUM_THREADS to pin it).
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
import torch.nn.functional as F

import segaudit  # noqa: F401  (patches torchvision on a CPU torch)
from segaudit.models import build_model
from segaudit.privacy import GRAD_SAMPLE_MODES, check_private_model, make_private_model


def plain_step(model, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def dp_step(model, x, y, mode: str):
    from opacus.grad_sample import get_gsm_class
    from opacus.optimizers import DPOptimizer

    check_private_model(model)
    model = copy.deepcopy(model).train()
    gsm = get_gsm_class(mode)(model, **({"force_functorch": True} if mode == "functorch" else {}))
    opt = DPOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=len(x), generator=torch.Generator().manual_seed(0))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(gsm(x), y).backward()
        opt.step()

    return step


def best_time(step, repeats: int) -> float:
    step()
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default=",".join(GRAD_SAMPLE_MODES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    base = build_model("unet", encoder="resnet18", in_channels=1, classes=2)
    fixed, changes = make_private_model(base)
    x = torch.randn(args.batch_size, 1, args.size, args.size)
    y = torch.randint(0, 2, (args.batch_size, args.size, args.size))
    print(f"Unet-resnet18, batch {args.batch_size}, {args.size} px, {torch.get_num_threads()} threads; DP model: "
          + "; ".join(changes))
    t_gn = best_time(plain_step(copy.deepcopy(fixed), x, y), args.repeats)
    t_bn = best_time(plain_step(copy.deepcopy(base), x, y), args.repeats)
    print(f"non-private step: {t_gn:.3f} s (GroupNorm model), {t_bn:.3f} s (BatchNorm baseline)")
    for mode in args.modes.split(","):
        t = best_time(dp_step(fixed, x, y, mode), args.repeats)
        print(f"DP-SGD {mode:9s}: {t:.3f} s  ratio {t / t_gn:.2f}x vs GroupNorm, {t / t_bn:.2f}x vs BatchNorm")


if __name__ == "__main__":
    main()
