"""Per-layer leakage benchmark (budget: about 10 CPU minutes on 2 cores).

1. Timing of the full ``layer_scores`` report for Unet-resnet18 at 64 px (target <= 300 s) and of the
   update gate on one update (target <= 10 s, including the model load).
2. Ablation at real size: the full attack's PSNR with the top-scored group's update removed vs the
   bottom-scored group's.
3. BatchNorm and skip connections: full-attack PSNR/Dice and mean analytic/sensitivity exposure of
   Unet with and without decoder BatchNorm (``decoder_use_norm``) and of DeepLabV3 (no skip) vs
   DeepLabV3+ (one encoder skip), same encoder, same image, same budget.

Usage: ``OMP_NUM_THREADS=1 python bench/layers.py [--steps 30]``; prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from segaudit.data import load_dataset, make_batch, split
from segaudit.fl import client_update
from segaudit.leakage import ablation_attack, gate_update, layer_scores
from segaudit.models import build_model, load_model, save_model
from segaudit.updates import load_update, save_update


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    data = load_dataset("nuclei")
    batch = make_batch(data, [split(data, seed=0)[1][0]], size=64, fit="crop", seed=0)
    out: dict = {}

    torch.manual_seed(0)
    unet = build_model("unet", in_channels=1, classes=2)
    t0 = time.perf_counter()
    report = layer_scores(unet, batch, data=data, steps=args.steps)
    out["report_s"] = time.perf_counter() - t0
    out["report_runtime"] = report.runtime_s
    out["groups"] = {g.name: {"score": g.score, **g.components, "attack_psnr": g.attack_psnr,
                              "rank_deficiency": g.rank_deficiency, "condition": g.condition} for g in report.groups}
    out["full"], out["baseline"] = report.full, report.baseline
    ranked = report.ranking()
    update = client_update(unet, batch, train_mode=False)
    out["ablation"] = {"top": ranked[0], "bottom": ranked[-1],
                       "drop_top": ablation_attack(unet, update, batch, [ranked[0]], steps=args.steps),
                       "drop_bottom": ablation_attack(unet, update, batch, [ranked[-1]], steps=args.steps)}
    print(json.dumps({k: out[k] for k in ("report_s", "ablation")}, default=str), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        save_model(unet, Path(tmp) / "model")
        gates = {}
        for n in (1, 2, 4, 8):
            b = make_batch(data, list(range(n)), size=64, fit="crop", seed=0)
            save_update(client_update(unet, b, train_mode=False), Path(tmp) / f"u{n}.safetensors")
        t0 = time.perf_counter()
        model = load_model(Path(tmp) / "model")
        gate = gate_update(model, load_update(Path(tmp) / "u1.safetensors"), size=64)
        out["gate_s"] = time.perf_counter() - t0
        for n in (1, 2, 4, 8):
            gates[n] = gate_update(model, load_update(Path(tmp) / f"u{n}.safetensors"), size=64).risk
        out["gate_risk_by_batch"] = gates
        out["gate_riskiest"] = gate.riskiest

    variants = {
        "unet_bn": build_model("unet", in_channels=1, classes=2),
        "unet_no_decoder_bn": build_model("unet", in_channels=1, classes=2, decoder_use_norm=False),
        "deeplabv3_no_skip": build_model("deeplabv3", in_channels=1, classes=2),
        "deeplabv3plus_skip": build_model("deeplabv3plus", in_channels=1, classes=2),
    }
    out["variants"] = {}
    for name, model in variants.items():
        torch.manual_seed(0)
        r = layer_scores(model, batch, data=data, steps=args.steps, scorers=("analytic", "sensitivity"))
        out["variants"][name] = {
            "full_psnr": r.full["psnr"], "full_dice": r.full["mask_dice"],
            "analytic_mean": mean(g.components.get("analytic") for g in r.groups),
            "sensitivity_mean": mean(g.components.get("sensitivity") for g in r.groups),
            "score_mean": mean(g.score for g in r.groups), "seconds": r.runtime_s["total"]}
        print(name, json.dumps(out["variants"][name]), flush=True)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
