"""Privacy-utility frontier on the bundled nuclei data (Unet-resnet18, 64 px), and dropout vs its adaptive attack.

Every defense: utility = held-out Dice of a fresh U-Net trained by simulated federated training through the
defense (DP: Opacus DP-SGD, with its epsilon); leakage = the adaptive ``seg`` attack (``dropout`` attack for
the dropout defense) on one held-out client update of the untrained global model, client in eval mode.
Then the dropout comparison: the naive ``seg`` attack vs the adaptive ``dropout`` attack (masks optimised,
DIA) vs the attacker that knows the masks, on the same dropout-defended update.

    OMP_NUM_THREADS=2 python bench/tradeoff.py                       # the table in docs/benchmarks.md
    OMP_NUM_THREADS=2 python bench/tradeoff.py --train-steps 20 --attack-steps 20   # a quick look
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segaudit.data import load_dataset  # noqa: E402
from segaudit.defenses import parse_defense  # noqa: E402
from segaudit.io import write_json  # noqa: E402
from segaudit.models import build_model  # noqa: E402
from segaudit.report.plots import tradeoff_frontier  # noqa: E402
from segaudit.tradeoff import TradeoffSettings, attack_defended, run_tradeoff  # noqa: E402

DEFAULT = "none,noise:0.0001,clip:1,prune:0.9,quant:2,dropout:0.5,dp:eps=1,dp:eps=8"


def _f(v, digits=3):
    return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defenses", default=DEFAULT)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--train-batch-size", type=int, default=4)
    ap.add_argument("--attack-steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sweep", action="store_true", help="only the dropout comparison")
    ap.add_argument("--out", default="reports/bench_tradeoff")
    args = ap.parse_args()

    data = load_dataset("nuclei")
    torch.manual_seed(args.seed)
    model = build_model("unet", encoder="resnet18", in_channels=data.channels, classes=data.num_classes)
    settings = TradeoffSettings(size=args.size, batch_size=args.batch_size, train_steps=args.train_steps,
                                train_batch_size=args.train_batch_size, attack_steps=args.attack_steps,
                                seed=args.seed)
    out = Path(args.out)
    print(f"Unet-resnet18, nuclei, {args.size} px; training {args.train_steps} steps x {args.train_batch_size} "
          f"images; attack {args.attack_steps} steps, batch {args.batch_size}, client in eval mode; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    if not args.skip_sweep:
        print("| defense | epsilon | utility Dice | utility IoU | attack | PSNR dB | SSIM | mask Dice | seconds |")
        print("|---|---|---|---|---|---|---|---|---|", flush=True)

        def show(r):
            print(f"| `{r['defense']}` | {_f(r['epsilon'])} | {r['utility_dice']:.3f} | {r['utility_iou']:.3f} | "
                  f"{r['attack']} | {_f(r['attack_psnr'])} | {_f(r['attack_ssim'])} | {_f(r['attack_mask_dice'])} | "
                  f"{r['runtime_s']:.0f} |", flush=True)

        rows = run_tradeoff(model, data, args.defenses.split(","), settings, on_row=show)
        tradeoff_frontier(rows, out / "frontier.png", title="Unet-resnet18, nuclei 64 px")

    print("\nDropout (p = 0.5 on the decoder output) against three attackers, same update:")
    print("| attacker | PSNR dB | SSIM | mask Dice | seconds |")
    print("|---|---|---|---|---|", flush=True)
    dropout = parse_defense("dropout:0.5")
    compare = []
    for label, attack, opts in (("naive `seg` (no masks modelled)", "seg", {}),
                                ("adaptive `dropout` (masks optimised, DIA)", "dropout", {}),
                                ("`dropout`, masks known from the seed", "dropout", {"known_masks": True})):
        start = time.perf_counter()
        r = attack_defended(model, data, dropout, settings, attack=attack, **opts)
        r.update(label=label, seconds=time.perf_counter() - start)
        compare.append(r)
        print(f"| {label} | {_f(r['attack_psnr'])} | {_f(r['attack_ssim'])} | {_f(r['attack_mask_dice'])} | "
              f"{r['seconds']:.0f} |", flush=True)
    write_json(out / "bench_tradeoff.json", {"settings": settings.__dict__, "rows": rows, "dropout": compare})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
