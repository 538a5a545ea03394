"""``make demo``: the full audit on the bundled nuclei data, written to ``reports/demo/report.html``.

Two models (U-Net and DeepLabV3+, resnet18, trained here), FedSGD and FedAvg at batch 1 and 4, inference
attacks, per-layer scores, and the defense trade-off with DP-SGD, 3 images per cell, clients in train mode — on
a budget that takes over an hour on 2 CPU cores (``quick``: one model, 1 image per cell, 3–4 minutes).
"""
from __future__ import annotations

from pathlib import Path

from .audit import AuditResult, run
from .config import AuditConfig, ModelConfig

USE = "nucleus segmentation in fluorescence microscopy (demo: bundled DSB2018 tiles)"


def demo_config(quick: bool = False) -> AuditConfig:
    """The demo's audit: small budgets chosen so the whole audit runs on a laptop CPU."""
    if quick:
        return AuditConfig(name="segaudit demo (quick)",
                           models=(ModelConfig("unet", train_steps=40, intended_use=USE),),
                           attack_steps=30, batch_sizes=(1,), modes=("fedsgd",), images=1,
                           defenses=("none", "noise:0.01"), tradeoff_train_steps=10, inference=("composition",),
                           inference_updates=16, layers=True, layer_attack_steps=3)
    return AuditConfig(
        name="segaudit demo",
        models=(ModelConfig("unet", arch="unet", train_steps=200, intended_use=USE),
                ModelConfig("deeplabv3plus", arch="deeplabv3plus", train_steps=200, intended_use=USE)),
        attack_steps=60, batch_sizes=(1, 4), modes=("fedsgd", "fedavg"), local_steps=2, images=3,
        defenses=("none", "noise:0.01", "dp:eps=8"), tradeoff_train_steps=40,
        inference=("composition", "membership"), inference_updates=40, layers=True, layer_attack_steps=6)


def run_demo(out: str | Path = "reports/demo", quick: bool = False, force: bool = False,
             progress: bool = True, redact: bool = False) -> AuditResult:
    """Run the demo audit into ``out`` (resumed when ``out`` holds an earlier demo; ``force`` starts afresh)."""
    command = "segaudit demo" + (" --quick" if quick else "")
    return run(demo_config(quick), out, force=force, redact=redact, progress=progress, command=command)
