"""One audit: from a config to a results store, ``results.json`` and a self-contained ``report.html``.

``run(config, out)`` trains (or loads) each model, then runs every cell — inversion attacks over modes,
batch sizes, images and seeds; inference attacks; per-layer scores; the defense trade-off — storing each
finished run in ``out/results.sqlite``. A rerun of the same config skips stored runs (resume); Ctrl-C loses at
most the run in progress. ``collect`` turns the store into the ``results.json`` dict the report renders.
"""
from __future__ import annotations

import datetime as _dt
import math
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import AuditConfig, ModelConfig
from .errors import SegauditError
from .store import ResultsStore, run_key

Log = Callable[[str], None]


@dataclass
class AuditResult:
    """An audit's outcome: the ``results.json`` dict and where its files are."""

    results: dict[str, Any]
    out: Path
    report: Path | None

    @property
    def risk(self) -> str | None:
        return (self.results.get("risk") or {}).get("level")


def run(config: AuditConfig, out: str | Path, *, force: bool = False, redact: bool = False, progress: bool = True,
        command: str = "", log: Log | None = None) -> AuditResult:
    """Run (or resume) the audit ``config`` in the folder ``out``.

    Args:
        out: the audit folder: ``results.sqlite``, ``models/``, ``artefacts/``, ``results.json``, ``report.html``.
            A folder holding a store is resumed; any other non-empty folder is refused unless ``force``
            (which starts afresh).
        redact: leave client images out of the report (a report showing them would itself leak data).
        command: the command line, recorded for reproducibility.

    Example:
        >>> result = run(AuditConfig.quick(), "reports/quick")
        >>> result.risk, result.report
    """
    from .data import load_dataset
    from .io import check_out_dir, write_json

    out = Path(out)
    store_path = out / "results.sqlite"
    if force and out.exists():
        shutil.rmtree(out)
    elif not store_path.exists():
        check_out_dir(out, force=False)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda _msg: None)
    store = ResultsStore(store_path)
    try:
        created = store.meta().get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        store.set_meta(config=config.to_dict(), config_hash=config.digest(), command=command, created=created)
        data = load_dataset(config.data, classes=config.classes)
        for model_config in config.models:
            model = _trained_model(model_config, config, data, store, out, progress, log)
            for step in (_attack_cells, _inference_cells, _layer_cells, _tradeoff_cells):
                step(model, model_config, config, data, store, out, progress, log)
        results = collect(store, store.meta())
    finally:
        store.close()
    write_json(out / "results.json", results)
    report = None
    try:
        from .report.html import write_html
    except ImportError:  # the report module is optional while it is being built
        write_html = None
    if write_html is not None:
        report = write_html(results, out / "report.html", base_dir=out, redact=redact)
    return AuditResult(results, out, report)


# -- models ------------------------------------------------------------------------------------------------------

def _slug(name: str) -> str:
    import hashlib

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]


def _trained_model(mc: ModelConfig, config: AuditConfig, data, store: ResultsStore, out: Path, progress: bool,
                   log: Log):
    """The model of ``mc``: its checkpoint, or trained on the data (cached in ``out/models``, resumable)."""
    from .io import atomic_dir
    from .models import build_model, load_model, save_model
    from .train import train_model

    settings = {"model": mc.name, "arch": mc.arch, "encoder": mc.encoder, "checkpoint": mc.checkpoint,
                "train_steps": mc.train_steps, "data": config.data, "size": config.size}
    key = run_key("train", settings)
    folder = out / "models" / _slug(mc.name)
    if mc.checkpoint:
        model = load_model(mc.checkpoint)
        data.check_channels(model.segaudit_spec["in_channels"])
        from .train import evaluate
        from .data import split

        if not store.has(key):
            start = time.perf_counter()
            scores = evaluate(model, data, split(data, seed=0)[1], _eval_size(data))
            store.put(key, "train", settings, {"heldout_dice": scores["dice"], "heldout_iou": scores["iou"],
                                               "steps": None, "spec": _spec(model)}, time.perf_counter() - start)
        return model
    if store.has(key) and folder.exists():
        return load_model(folder)
    log(f"training {mc.name} ({mc.arch}, {mc.train_steps} steps)")
    torch.manual_seed(0)
    model = build_model(mc.arch, encoder=mc.encoder, in_channels=data.channels, classes=data.num_classes)
    result = train_model(model, data, size=config.size, steps=mc.train_steps, seed=0, progress=progress)
    with atomic_dir(folder) as tmp:
        save_model(result.model, tmp)
    store.put(key, "train", settings, {"heldout_dice": result.dice, "heldout_iou": result.iou,
                                       "steps": result.steps, "spec": _spec(result.model)}, result.seconds)
    return result.model


def _spec(model) -> dict:
    from .models import model_spec

    return {**model_spec(model), "parameters": sum(p.numel() for p in model.parameters())}


def _eval_size(data) -> int:
    return max(32, min(256, data.min_size) // 32 * 32)


# -- cells --------------------------------------------------------------------------------------------------------

def _heldout_batch(data, config: AuditConfig, batch_size: int, image: int, seed: int):
    """The ``image``-th client batch of ``batch_size`` held-out crops (deterministic by image and seed)."""
    from .data import make_batch, split

    held = split(data, seed=0)[1]
    picks = [held[(image * batch_size + i) % len(held)] for i in range(batch_size)]
    return make_batch(data, picks, size=config.size, fit="crop" if data.min_size >= config.size else "resize",
                      seed=1000 * seed + image)


def _run_cell(store: ResultsStore, kind: str, settings: dict, work: Callable[[str], dict], log: Log) -> None:
    """Run ``work(key)`` unless the store has it; a failure is stored with its one-line reason."""
    key = run_key(kind, settings)
    if store.has(key):
        return
    start = time.perf_counter()
    try:
        result = {"status": "ok", **work(key)}
    except SegauditError as e:
        result = {"status": "failed", "error": str(e)}
        log(f"{kind} {settings}: failed: {e}")
    store.put(key, kind, settings, result, time.perf_counter() - start)


def _attack_cells(model, mc, config, data, store, out, progress, log):
    from .attacks import ATTACKS
    from .fl import client_update
    from .metrics import score
    from .progress import progress as bar
    from .report.plots import reconstruction_grid
    from .types import Prior

    cells = [(a, mode, b, s, i) for a in config.attacks for mode in config.modes for b in config.batch_sizes
             for s in config.seeds for i in range(config.images)]
    for attack, mode, b, seed, image in bar(cells, desc=f"attacks on {mc.name}", enabled=progress):
        local = config.local_steps if mode == "fedavg" else 1
        settings = {"model": mc.name, "attack": attack, "defense": "none", "mode": mode, "batch_size": b,
                    "local_steps": local, "seed": seed, "image": image, "steps": config.attack_steps,
                    "restarts": config.restarts, "client_mode": config.client_mode, "size": config.size}

        def work(key, attack=attack, mode=mode, b=b, seed=seed, image=image, local=local):
            batch = _heldout_batch(data, config, b, image, seed)
            update = client_update(model, batch, mode=mode, local_steps=local, lr=config.lr,
                                   train_mode=config.client_mode == "train")
            attacker = ATTACKS.create(attack, steps=config.attack_steps, restarts=config.restarts, seed=seed,
                                      show_progress=False)
            rec = attacker.run(model, update, Prior.from_batch_shape(batch))
            grid = Path("artefacts") / f"{key}.png"
            reconstruction_grid(batch, rec, out / grid, title=f"{attack} on {mc.name}, {mode}, batch {b}")
            return {"metrics": score(rec, batch), "reconstruction_status": rec.status,
                    "artefacts": {"grid": grid.as_posix()}}

        _run_cell(store, "attack", settings, work, log)


def _default_property(data, config: AuditConfig) -> str:
    """``<last class>>X`` with X the median share of that class in the data's crops: a balanced question."""
    from .attacks.inference import crop_pool

    pool = crop_pool(data, list(range(len(data))), config.size, 4, seed=0)
    k = data.num_classes - 1
    median = float((pool.masks == k).flatten(1).double().mean(1).median())
    return f"{k}>{median:.2f}"


def _inference_cells(model, mc, config, data, store, out, progress, log):
    from .attacks.inference import run_inference

    if not config.inference:
        return
    prop = config.property or _default_property(data, config)
    for attack in config.inference:
        for b in config.inference_batch_sizes:
            settings = {"model": mc.name, "attack": attack, "batch_size": b, "updates": config.inference_updates,
                        "property": None if attack == "membership" else prop, "defense": "none",
                        "client_mode": config.client_mode, "size": config.size, "seed": config.seeds[0]}

            def work(_key, attack=attack, b=b, settings=settings):
                r = run_inference(model, data, attack, prop=settings["property"], batch_size=b,
                                  updates=config.inference_updates, size=config.size, seed=config.seeds[0],
                                  show_progress=progress, train_mode=config.client_mode == "train")
                summary = r.summary()
                return {k: summary[k] for k in ("auc", "auc_ci", "tpr_at_1pct_fpr", "composition_mae",
                                                 "composition_mae_ci", "composition_mae_analytic", "runtime_s")}

            _run_cell(store, "inference", settings, work, log)


def _layer_cells(model, mc, config, data, store, out, progress, log):
    from .leakage import layer_scores
    from .report.plots import layer_scores_chart

    if not config.layers:
        return
    settings = {"model": mc.name, "steps": config.layer_attack_steps, "client_mode": config.client_mode,
                "size": config.size, "seed": config.seeds[0]}

    def work(key):
        batch = _heldout_batch(data, config, 1, 0, config.seeds[0])
        report = layer_scores(model, batch, data=data, steps=config.layer_attack_steps, seed=config.seeds[0],
                              train_mode=config.client_mode == "train", show_progress=progress)
        chart = Path("artefacts") / f"{key}-layers.png"
        layer_scores_chart(report, out / chart)
        return {"report": report.to_dict(), "artefacts": {"chart": chart.as_posix()}}

    _run_cell(store, "layers", settings, work, log)


def _tradeoff_cells(model, mc, config, data, store, out, progress, log):
    from .tradeoff import TradeoffSettings, run_tradeoff

    if config.defenses == ("none",) or not config.defenses:
        return
    settings_obj = TradeoffSettings(size=config.size, batch_size=1, train_steps=config.tradeoff_train_steps,
                                    attack_steps=config.attack_steps, client_mode=config.client_mode,
                                    seed=config.seeds[0])
    for spec in config.defenses:
        settings = {"model": mc.name, "defense": spec, "train_steps": config.tradeoff_train_steps,
                    "attack_steps": config.attack_steps, "client_mode": config.client_mode, "size": config.size,
                    "seed": config.seeds[0]}

        def work(_key, spec=spec):
            row = run_tradeoff(model, data, [spec], settings_obj, progress=progress)[0]
            if row.get("name") == "dp":
                from .privacy import make_private_model
                import copy

                _, changes = make_private_model(copy.deepcopy(model))
                params = row.get("params", {})
                row["dp"] = {"epsilon": row.get("epsilon"), "delta": params.get("delta"),
                             "noise_multiplier": row.get("noise_multiplier"), "max_grad_norm": row.get("max_grad_norm"),
                             "sample_rate": row.get("sample_rate"), "steps": config.tradeoff_train_steps,
                             "accountant": params.get("accountant"), "model_changes": changes}
            return {k: v for k, v in row.items() if k != "defense"}

        _run_cell(store, "tradeoff", settings, work, log)


# -- results.json -------------------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "segmentation_models_pytorch", "opacus", "segaudit"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _mean_ci(values: list[float]) -> dict[str, Any] | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return None
    mean = float(np.mean(v))
    half = 1.96 * float(np.std(v, ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(v)}


def collect(store: ResultsStore, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` dict (schema 1) of everything in ``store``; see ``tests/data/results_example.json``."""
    from .data import load_dataset

    config = AuditConfig.from_dict(meta["config"])
    data = load_dataset(config.data, classes=config.classes)
    models = []
    for mc in config.models:
        train = next((r for r in store.runs("train") if r["model"] == mc.name), None)
        spec = (train or {}).get("spec", {})
        models.append({"name": mc.name, "arch": spec.get("arch", mc.arch), "encoder": spec.get("encoder", mc.encoder),
                       "checkpoint": mc.checkpoint, "params": spec.get("parameters"),
                       "in_channels": data.channels, "classes": data.num_classes, "class_names": list(data.class_names),
                       "intended_use": mc.intended_use,
                       "trained": None if train is None else {k: train.get(k) for k in ("steps", "heldout_dice", "heldout_iou")}})
    runs = [{k: v for k, v in r.items() if k != "kind"} | {"id": r["key"], "kind": "attack"}
            for r in store.runs("attack")]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["status"] == "ok":
            cell = (r["model"], r["attack"], r["defense"], r["mode"], r["batch_size"])
            groups.setdefault(cell, []).append(r["metrics"])
    cells = [{"model": m, "attack": a, "defense": d, "mode": mode, "batch_size": b, "n": len(ms),
              **{k: _mean_ci([x.get(k) for x in ms]) for k in ("psnr", "ssim", "mse", "mask_dice", "mask_iou")}}
             for (m, a, d, mode, b), ms in groups.items()]
    layers = {r["model"]: r["report"] | {"chart": r.get("artefacts", {}).get("chart")}
              for r in store.runs("layers") if r["status"] == "ok"}
    results = {
        "schema": 1, "segaudit_version": _versions()["segaudit"], "created": meta.get("created"),
        "command": meta.get("command", ""), "config_hash": meta.get("config_hash"), "config": meta["config"],
        "versions": _versions(),
        "data": {"name": config.data, "images": len(data), "classes": list(data.class_names), "channels": data.channels,
                 "size": config.size},
        "models": models, "runs": runs, "cells": cells,
        "inference": [{k: v for k, v in r.items() if k not in ("kind", "key")} for r in store.runs("inference")],
        "layers": layers,
        "tradeoff": [{k: v for k, v in r.items() if k not in ("kind", "key")} for r in store.runs("tradeoff")],
    }
    try:
        from .report.findings import recommendations, risk
    except ImportError:
        return results
    results["risk"] = risk(results)
    results["recommendations"] = recommendations(results)
    return results
