"""``make demo``: train a small U-Net on the bundled nuclei data, simulate client updates, summarise them."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from .data import load_dataset, make_batch
from .fl import client_update
from .io import atomic_dir, check_out_dir, write_json, write_text
from .models import build_model, layer_groups, save_model
from .train import train_model
from .updates import save_update


def _group_norms(model, update) -> dict[str, float]:
    """L2 norm of the update restricted to each layer group."""
    return {g.name: float(torch.sqrt(sum((update.tensors[p].double() ** 2).sum() for p in g.params)))
            for g in layer_groups(model)}


def run_demo(out: str | Path = "reports/demo", quick: bool = False, force: bool = False, seed: int = 0,
             progress: bool = True, steps: int | None = None) -> Path:
    """Run the demo and write ``out/summary.json``, ``out/summary.md``, ``out/model/`` and ``out/updates/``.

    Args:
        quick: 60 training steps instead of 300 (``steps`` overrides both).

    The folder appears whole at the end (built in a temporary folder, then renamed).
    """
    out = check_out_dir(out, force)
    torch.manual_seed(seed)
    data = load_dataset("nuclei")
    model = build_model("unet", encoder="resnet18", in_channels=data.channels, classes=len(data.class_names))
    steps = steps or (60 if quick else 300)
    result = train_model(model, data, size=64, steps=steps, batch_size=8, seed=seed, progress=progress)
    heldout = [data.names.index(n) for n in result.heldout_names]
    cases = {"fedsgd_b1": dict(n=1, mode="fedsgd"), "fedsgd_b4": dict(n=4, mode="fedsgd"),
             "fedavg_b4_k4": dict(n=4, mode="fedavg", local_steps=4, lr=0.01)}
    rows = {}
    with atomic_dir(out) as tmp:
        save_model(result.model, tmp / "model")
        for name, case in cases.items():
            batch = make_batch(data, heldout[: case["n"]], size=64, seed=seed, fit="crop")
            t0 = time.perf_counter()
            update = client_update(result.model, batch, mode=case["mode"], local_steps=case.get("local_steps", 1),
                                   lr=case.get("lr", 0.01))
            save_update(update, tmp / "updates" / f"{name}.safetensors")
            norms = _group_norms(result.model, update)
            rows[name] = {"mode": update.meta.mode, "batch_size": len(batch), "local_steps": update.meta.local_steps,
                          "seconds": time.perf_counter() - t0, "norm": update.norm(),
                          "foreground_fraction": float((batch.masks > 0).float().mean()),
                          "largest_groups": sorted(norms, key=norms.get, reverse=True)[:3], "group_norms": norms}
        summary = {"dataset": "nuclei", "classes": list(data.class_names), "images": len(data),
                   "model": {"arch": "unet", "encoder": "resnet18",
                             "parameters": sum(p.numel() for p in result.model.parameters())},
                   "training": result.summary(), "updates": rows,
                   "versions": {"python": platform.python_version(), "torch": torch.__version__}}
        write_json(tmp / "summary.json", summary)
        write_text(tmp / "summary.md", _markdown(summary))
    return out


def _markdown(s: dict) -> str:
    t = s["training"]
    lines = [f"# segaudit demo — {s['dataset']}", "",
             f"Trained U-Net ({s['model']['encoder']}, {s['model']['parameters']:,} parameters) for {t['steps']} steps "
             f"in {t['seconds']:.0f} s: held-out Dice **{t['heldout_dice']:.3f}**, IoU **{t['heldout_iou']:.3f}**.", "",
             "| update | mode | batch | local steps | norm | foreground | largest groups |", "|---|---|---|---|---|---|---|"]
    for name, r in s["updates"].items():
        lines.append(f"| {name} | {r['mode']} | {r['batch_size']} | {r['local_steps']} | {r['norm']:.4g} | "
                     f"{r['foreground_fraction']:.2f} | {', '.join(r['largest_groups'])} |")
    return "\n".join(lines) + "\n"
