"""Does the gate's risk predict what the attack achieves? One row per attacked client update, resumable.

For every combination of model state (untrained / trained: `train_model`, 300 steps), client mode (train / eval),
protocol (FedSGD / FedAvg with `--local-steps` steps at lr 0.01) and batch size, `--images` client batches (crops of
consecutive images of the data, all of them: the gate never looks at data, and a batch of 16 needs 16 images) are
made into updates; each is scored by `segaudit.leakage.gate_update` (data-free) and attacked by `seg`
(`attack_batch`, the attacker's baseline and distractors from `attacker_data`). A row holds the gate's risk and
components and the attack's PSNR gain, mask Dice gain and re-identification rate. Rows go to `--out` (JSON lines)
as they finish; a rerun skips the rows already there, so the benchmark survives being stopped.

`--plot` draws risk against identification and gain from the rows so far (`--out` with `.png`) and prints, per
threshold, the share of blocked updates whose attack succeeded and the share of passed updates whose attack failed
(success: identification rate >= 0.5, or a PSNR gain of at least 3 dB).

Threads: `torch.set_num_threads(--threads)`, default 1 (pin OMP_NUM_THREADS as well).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/gate_calibration.py [--data nuclei] [--batches 1,2,4,8,16]
     [--images 2] [--steps 200] [--out bench/results/gate_calibration.jsonl]
     OMP_NUM_THREADS=1 .venv/bin/python bench/gate_calibration.py --plot
"""
import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from segaudit.attacks.knowledge import attacker_data
from segaudit.attacks.runner import attack_batch
from segaudit.data import load_dataset, make_batch
from segaudit.leakage import gate_update
from segaudit.models import build_model
from segaudit.preprocessing import normalisation
from segaudit.train import train_model
from segaudit.types import ClientProtocol

OUT = Path(__file__).parent / "results" / "gate_calibration.jsonl"
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def succeeded(row: dict) -> bool:
    """The attack learned the client's data: re-identified half the batch, or 3 dB over the attacker's baseline."""
    return (row["identification"] or 0) >= 0.5 or (row["psnr_gain"] or -99) >= 3.0


def agreement(rows: list[dict], threshold: float) -> tuple[float | None, float | None, int, int]:
    """Share of blocked updates whose attack succeeded, share of passed ones whose attack failed, and the counts."""
    blocked = [r for r in rows if r["risk"] > threshold]
    passed = [r for r in rows if r["risk"] <= threshold]
    hit = sum(map(succeeded, blocked)) / len(blocked) if blocked else None
    miss = sum(not succeeded(r) for r in passed) / len(passed) if passed else None
    return hit, miss, len(blocked), len(passed)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def plot(rows: list[dict], path: Path) -> None:
    from segaudit.report.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "identification", "re-identification rate"),
                           (axes[1], "psnr_gain", "PSNR gain over the baseline (dB)")):
        for (mode, client), marker in zip(itertools.product(("fedsgd", "fedavg"), ("train", "eval")), "os^v"):
            # re-identification is undefined without distractors (a batch holding every image of the data)
            pick = [r for r in rows if r["mode"] == mode and r["client_mode"] == client and r[key] is not None]
            ax.scatter([r["risk"] for r in pick], [r[key] for r in pick], marker=marker, alpha=0.7,
                       label=f"{mode}, {client} mode")
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("gate risk")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"gate risk against the seg attack ({len(rows)} updates)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def row_for(model, data, state, client, mode, n, image, args) -> dict:
    idx = [(image * n + i) % len(data) for i in range(n)]
    norm = normalisation(model)
    batch = make_batch(data, idx, size=args.size, fit="crop", seed=args.seed + image, **norm)
    knowledge = attacker_data(data, batch, args.size, fit="crop", norm=norm, seed=args.seed + image)
    protocol = ClientProtocol(mode, local_steps=args.local_steps if mode == "fedavg" else 1, client_mode=client)
    start = time.perf_counter()
    out = attack_batch(model, batch, "seg", protocol, knowledge=knowledge, steps=args.steps, seed=args.seed + image)
    gate = gate_update(model, out.update, size=args.size)
    facing = next((g for g in gate.groups if g["risk"] == gate.risk), {})
    return {"data": args.data, "state": state, "client_mode": client, "mode": mode, "batch": n, "image": image,
            "risk": gate.risk, "determined": facing.get("determined"), "signal": facing.get("signal"),
            "psnr_gain": out.metrics.get("psnr_gain"), "mask_dice_gain": out.metrics.get("mask_dice_gain"),
            "identification": out.identification.get("identification_rate"),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="nuclei")
    ap.add_argument("--states", default="untrained,trained")
    ap.add_argument("--client-modes", default="train,eval")
    ap.add_argument("--modes", default="fedsgd,fedavg")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.plot:
        plot(rows, args.out.with_suffix(".png"))
        print(f"{len(rows)} updates, {torch.get_num_threads()} thread(s); success = identified >= 0.5 or gain >= 3 dB")
        print("| threshold | blocked | blocked that succeeded | passed | passed that failed |\n|---|---|---|---|---|")
        for t in THRESHOLDS:
            hit, miss, nb, npass = agreement(rows, t)
            print(f"| {t} | {nb} | {_percent(hit)} | {npass} | {_percent(miss)} |")
        return
    done = {(r["data"], r["state"], r["client_mode"], r["mode"], r["batch"], r["image"]) for r in rows}
    data = load_dataset(args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for state in args.states.split(","):
        torch.manual_seed(args.seed)
        model = build_model("unet", in_channels=data.channels, classes=data.num_classes)
        if state == "trained":
            model = train_model(model, data, size=args.size, steps=300, seed=args.seed, progress=False).model
        for client, mode, n, image in itertools.product(args.client_modes.split(","), args.modes.split(","),
                                                        map(int, args.batches.split(",")), range(args.images)):
            if (args.data, state, client, mode, n, image) in done:
                continue
            try:
                row = row_for(model, data, state, client, mode, n, image, args)
            except ValueError as e:  # a setting no client can run (NotApplicable)
                print(f"skipped {state} {client} {mode} b{n}: {e}")
                continue
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
