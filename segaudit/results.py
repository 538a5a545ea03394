"""An audit's results: the ``results.json`` dict built from its store, and read back from any of its files.

:func:`collect` turns a :class:`~segaudit.store.ResultsStore` into the dict (schema 1, see
``tests/data/results_example.json``) with the verdict of :mod:`segaudit.findings`; :func:`load_results` rebuilds
it from a ``results.sqlite`` file; :func:`read_results` reads a ``results.json``, a folder holding one, or a store.

Example:
    >>> results, base = read_results("reports/demo/results.json")
    >>> results["risk"]["level"]
"""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import HONEST_SERVER, AuditConfig
from .data import BUNDLED, load_dataset
from .errors import SegauditError
from .findings import recommendations, risk
from .metrics import mean_summary, pooled_identification
from .store import ResultsStore

CELL_METRICS = ("psnr", "ssim", "mse", "mask_dice", "mask_iou", "baseline_psnr", "baseline_ssim", "baseline_mask_dice",
                "psnr_gain", "ssim_gain", "mask_dice_gain", "rdlv")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "segmentation_models_pytorch", "opacus", "segaudit"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _data_source(name: str) -> str:
    if name in BUNDLED:
        return f"bundled dataset '{name}' shipped with segaudit (provenance and licence: data/README.md)"
    return f"the auditor's folder {name}"


def _report_order(config: AuditConfig) -> Callable[[dict], tuple]:
    """Sort key of stored runs: the plan's order, whatever order the cells finished in (so executors agree)."""
    position = {"model": [m.name for m in config.models], "mode": list(config.modes),
                "batch_size": [*config.batch_sizes, *config.inference_batch_sizes], "seed": list(config.seeds),
                "defense": list(config.defenses), "attack": [*config.attacks, *config.inference]}

    def key(run: dict) -> tuple:
        where = [position[f].index(run.get(f)) if run.get(f) in position[f] else len(position[f])
                 for f in ("model", "attack", "mode", "batch_size", "seed", "defense")]
        return (*where, run.get("image") or 0, run["key"])

    return key


def collect(store: ResultsStore, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` dict (schema 1) of everything in ``store``; see ``tests/data/results_example.json``."""
    config = AuditConfig.from_dict(meta["config"])
    data = load_dataset(config.data, classes=config.classes)
    planned = set(meta.get("planned") or ())

    def stored(kind: str) -> list[dict]:  # only what the current config asked for
        return [r for r in store.runs(kind) if not planned or r["key"] in planned]

    hashes = meta.get("model_hashes") or {}
    models = []
    for mc in config.models:
        train = next((r for r in stored("train") if r["model"] == mc.name), None)
        spec = (train or {}).get("spec", {})
        models.append({"name": mc.name, "arch": spec.get("arch", mc.arch), "encoder": spec.get("encoder", mc.encoder),
                       "checkpoint": mc.checkpoint, "params": spec.get("parameters"), "model_hash": hashes.get(mc.name),
                       "preprocessing": spec.get("preprocessing"),
                       "in_channels": data.channels, "classes": data.num_classes, "class_names": list(data.class_names),
                       "intended_use": mc.intended_use,
                       "trained": None if train is None else {
                           k: train.get(k) for k in ("steps", "dice", "iou", "evaluated_on", "images")}})
    order = _report_order(config)
    runs = [{k: v for k, v in r.items() if k != "kind"} | {"id": r["key"], "kind": "attack"}
            for r in sorted(stored("attack"), key=order)]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["status"] == "ok":
            cell = (r["model"], r["attack"], r["defense"], r["mode"], r["batch_size"])
            groups.setdefault(cell, []).append(r)
    cells = [{"model": m, "attack": a, "defense": d, "mode": mode, "batch_size": b, "n": len(rs),
              "threat": rs[0].get("threat", HONEST_SERVER),
              **{k: mean_summary([r["metrics"].get(k) for r in rs]) for k in CELL_METRICS},
              **pooled_identification([r.get("identification") for r in rs])}
             for (m, a, d, mode, b), rs in groups.items()]
    layers = {r["model"]: r["report"] | {"chart": r.get("artefacts", {}).get("chart")}
              for r in stored("layers") if r["status"] == "ok"}
    results = {
        "schema": 1, "segaudit_version": _versions()["segaudit"], "created": meta.get("created"),
        "command": meta.get("command", ""), "config_hash": meta.get("config_hash"), "config": meta["config"],
        "versions": _versions(),
        "data": {"name": config.data, "images": len(data), "classes": list(data.class_names), "channels": data.channels,
                 "size": config.size, "source": _data_source(config.data), "data_hash": meta.get("data_hash")},
        "threads": sorted({r["threads"] for r in runs if r.get("threads")}),
        "models": models, "runs": runs, "cells": cells,
        "inference": [{k: v for k, v in r.items() if k not in ("kind", "key")}
                      for r in sorted(stored("inference"), key=order)],
        "layers": layers,
        "tradeoff": [{k: v for k, v in r.items() if k not in ("kind", "key")}
                     for r in sorted(stored("tradeoff"), key=order)],
    }
    results["risk"] = risk(results)
    results["recommendations"] = recommendations(results)
    return results


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` dict of an audit, rebuilt from its SQLite store (see :func:`collect`)."""
    p = Path(path)
    if not p.is_file():
        raise SegauditError(f"results store {os.fspath(path)!r} does not exist")
    store = ResultsStore(p)
    try:
        meta = store.meta()
        if "config" not in meta:
            raise SegauditError(f"{p} holds no audit (no config recorded); run 'segaudit audit' first")
        return collect(store, meta)
    finally:
        store.close()


def read_results(path: str | os.PathLike) -> tuple[dict, Path]:
    """Load a ``results.json`` (or a folder holding one, or a ``.sqlite`` results store).

    Returns:
        ``(results, base_dir)``: the dict and the folder its artefact paths are relative to.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "results.json").is_file():
            raise SegauditError(f"{path} is a folder without results.json; give the results.json file")
        path = path / "results.json"
    if not path.is_file():
        raise SegauditError(f"results file {path} not found")
    if path.suffix in (".sqlite", ".sqlite3", ".db"):
        results = load_results(path)
    else:
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise SegauditError(f"{path} is not a UTF-8 JSON file; give a results.json written by segaudit") from None
        except json.JSONDecodeError as e:
            raise SegauditError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                                "give a results.json written by segaudit") from None
    if not isinstance(results, dict):
        raise SegauditError(f"{path} holds a JSON {type(results).__name__}, not a results object; "
                            "give a results.json written by segaudit")
    return results, path.parent
