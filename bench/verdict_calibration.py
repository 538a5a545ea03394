"""Where the verdict's thresholds come from: gains of guesses that know nothing, against gains of real attacks.

For each bundled dataset, `--images` held-out 64 px crops are each a client's batch of one. Three kinds of
"reconstruction" are scored against each truth, with the attacker's baselines of `segaudit.metrics.score`
(the best constant image, the prior image and the composition mask from the attacker's public crops):

- null, other image: every public crop (another image of the same data, never the truth's) taken as the
  reconstruction, with its mask: a guess that looks like the data but carries no information on the client;
- null, attack on another client: the `seg` attack's output on another client's update, scored against this
  truth: what the attack's own style (smooth blobs, a plausible mask) scores without information;
- attack: the `seg` attack on this client's own update, in eval and in train mode (the default).

It prints, per metric, the nulls' 95th and 99th percentiles and maximum, the attacks' median, and the share of
each above the verdict's medium and high thresholds (`segaudit.report.findings`): a threshold is sound when
the nulls almost never reach it and real leaks do. One thread (`torch.set_num_threads(1)`, OMP_NUM_THREADS=1).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/verdict_calibration.py [--images 8] [--steps 200]
     [--data nuclei,brain_mri] [--save FILE]   (then --load FILE reprints the tables, e.g. after a threshold changed)
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from segaudit.attacks.knowledge import attacker_data
from segaudit.attacks.runner import attack_batch
from segaudit.data import load_dataset, make_batch, split
from segaudit.metrics import score
from segaudit.models import build_model
from segaudit.preprocessing import normalisation
from segaudit.report.findings import MASK_DICE_GAIN, PSNR_GAIN_DB, SSIM_GAIN
from segaudit.types import Reconstruction

METRICS = {"psnr_gain": PSNR_GAIN_DB, "ssim_gain": SSIM_GAIN, "mask_dice_gain": MASK_DICE_GAIN}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--data", default="nuclei,brain_mri", help="bundled names or folders, e.g. data/dev/fundus")
    ap.add_argument("--modes", default="eval,train", help="client modes attacked (the first also gives the null)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", metavar="FILE", help="write the samples as JSON (reprint with --load FILE)")
    ap.add_argument("--load", metavar="FILE", help="print the tables of saved samples instead of measuring")
    args = ap.parse_args()
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        return table(saved["samples"], saved["header"])
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    samples: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for name in args.data.split(","):
        data = load_dataset(name)
        torch.manual_seed(args.seed)
        model = build_model("unet", in_channels=data.channels, classes=data.num_classes)
        norm = normalisation(model)
        _, heldout = split(data, seed=args.seed)
        clients = [make_batch(data, [heldout[i % len(heldout)]], size=64, fit="crop", seed=args.seed + i, **norm)
                   for i in range(args.images)]
        knowledge = [attacker_data(data, b, 64, fit="crop", norm=norm, seed=args.seed) for b in clients]
        recs = {mode: [attack_batch(model, b, "seg", train_mode=mode == "train", steps=args.steps,
                                    seed=args.seed).reconstruction for b in clients] for mode in modes}
        for i, (truth, known) in enumerate(zip(clients, knowledge)):
            kw = known.score_kwargs()
            public = known.public
            for j in range(len(public)):
                other = Reconstruction(public.images[j:j + 1], public.masks[j:j + 1])
                add(samples, "null: another image", score(other, truth, **kw))
            for j, other in enumerate(recs[modes[0]]):
                if stem(clients[j]) != stem(truth):  # another crop of the same image is not another client's
                    add(samples, "null: attack on another client", score(other, truth, **kw))
            for mode in modes:
                add(samples, f"attack, {mode} mode", score(recs[mode][i], truth, **kw))
        print(f"{name}: {args.images} clients attacked ({time.perf_counter() - start:.0f} s so far)", flush=True)
    header = (f"seg attack, {args.steps} steps, untrained Unet-r18, FedSGD b1, 64 px, {args.images} clients per "
              f"dataset, client modes {args.modes}, data {args.data}, 1 thread")
    if args.save:
        Path(args.save).write_text(json.dumps({"header": header, "samples": samples}))
    table(samples, header)


def table(samples: dict, header: str) -> None:
    print(f"\n{header}")
    print("Per image, and as the verdict reads them: the mean of a cell of 3 images (10,000 random triples).")
    print("| metric | sample | n | p95 | p99 | max | median | share ≥ medium | share ≥ high | cell of 3: p99 | "
          "cell ≥ medium | cell ≥ high |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for metric, (high, medium) in METRICS.items():
        for kind, values in samples.items():
            v = np.asarray([x for x in values[metric] if x is not None and np.isfinite(x)])
            if not len(v):
                continue
            cells = v[rng.integers(0, len(v), size=(10_000, 3))].mean(axis=1)
            print(f"| {metric} (medium {medium:g}, high {high:g}) | {kind} | {len(v)} | {np.percentile(v, 95):.3f} | "
                  f"{np.percentile(v, 99):.3f} | {v.max():.3f} | {np.median(v):.3f} | {np.mean(v >= medium):.0%} | "
                  f"{np.mean(v >= high):.0%} | {np.percentile(cells, 99):.3f} | {np.mean(cells >= medium):.1%} | "
                  f"{np.mean(cells >= high):.1%} |")


def stem(batch) -> str:
    return batch.names[0].split("@")[0]


def add(samples: dict, kind: str, metrics: dict) -> None:
    for metric in METRICS:
        samples.setdefault(kind, {}).setdefault(metric, []).append(metrics[metric])


if __name__ == "__main__":
    main()
