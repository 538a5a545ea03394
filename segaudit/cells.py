"""One cell of an audit: what it is (:class:`Cell`), what it needs (:class:`Job`) and what it computes.

A cell is one independent unit of an audit: train or evaluate one model, one inversion attack on one client batch,
one inference attack, one model's per-layer scores, or one defense of the trade-off. :func:`run_cell` runs it
anywhere (in the driver, a pool worker or a Ray task) and returns its result and files for the driver to store;
its random state comes from its key, so the result does not depend on where it ran.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attacks.inference import run_inference
from .attacks.knowledge import attacker_data
from .attacks.runner import attack_batch
from .config import AuditConfig
from .data import load_dataset, make_batch, split
from .errors import NotApplicable, SegauditError
from .leakage import layer_scores
from .metrics import eval_crop_size
from .models import build_model, load_model, model_spec, save_model
from .preprocessing import Preprocessing, declare, normalisation
from .privacy import make_private_model
from .report.plots import layer_scores_chart, reconstruction_grid
from .store import run_key
from .tradeoff import TradeoffSettings, run_tradeoff
from .train import evaluate, train_model
from .types import ClientProtocol

NOT_APPLICABLE = NotApplicable.STATUS


@dataclass(frozen=True)
class Cell:
    """One independent unit of an audit: ``kind`` (train | attack | inference | layers | tradeoff), its
    ``settings`` (JSON values; the same settings are the same cell) and ``key`` (``run_key(kind, settings)``).

    Training cells write ``models/<slug>/``; every other cell loads its model from there (or from the model's
    checkpoint), so the plan runs in two stages: training, then everything else in any order or in parallel.
    """

    kind: str
    settings: dict
    key: str

    @classmethod
    def of(cls, kind: str, settings: dict) -> Cell:
        return cls(kind, settings, run_key(kind, settings))


@dataclass(frozen=True)
class Job:
    """What every cell of one audit needs besides its settings (picklable: it travels to worker processes).

    Attributes:
        data: the config's data, a folder made absolute (workers may run elsewhere).
        models: model name -> its folder or checkpoint (absolute).
        progress: inner progress bars (only for in-process runs).
    """

    config: AuditConfig
    data: str
    models: dict
    progress: bool = False


def model_folder(out: str | Path, name: str) -> Path:
    """Where the audit in ``out`` keeps the model ``name`` it trained."""
    return Path(out) / "models" / _slug(name)


def make_job(config: AuditConfig, out: str | Path, progress: bool = False) -> Job:
    """The :class:`Job` of ``config`` run into ``out`` (paths made absolute)."""
    data = config.data
    if Path(data).exists():
        data = str(Path(data).resolve())
    models = {mc.name: str(Path(mc.checkpoint).resolve() if mc.checkpoint else model_folder(out, mc.name).resolve())
              for mc in config.models}
    return Job(config, data, models, progress)


def with_preprocessing(model, mc):
    """``model`` with the config's ``preprocessing`` override, if any, recorded in its spec (in place)."""
    if mc.preprocessing is not None:
        channels = model.segaudit_spec["in_channels"]
        declare(model, Preprocessing.from_dict(mc.preprocessing, channels, f"model {mc.name!r}: 'preprocessing'"))
    return model


def load_checkpoint(path: str | Path, mc):
    """The checkpoint ``path`` of the model config ``mc``, with its ``preprocessing`` override."""
    return with_preprocessing(load_model(path), mc)


# -- the worker: one cell, anywhere ------------------------------------------------------------------------------

_DATA: dict = {}
_MODELS: dict = {}


def run_cell(cell: Cell, job: Job, model_files: dict | None = None) -> dict:
    """Run one cell and return ``{key, kind, settings, result, seconds, files, dirs}``; never raises on a cell error.

    The cell's random state comes from its key (torch, numpy and ``random`` are seeded, then restored), so
    the result does not depend on which process ran it or what ran before. A failure becomes
    ``{"status": "failed", "error": one line}``. Files are returned as bytes for the driver to write.

    Args:
        model_files: the model folder's files (name -> bytes) when the worker cannot read ``job.models``.
    """
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="segaudit-cell-"))
    np_state, py_state = np.random.get_state(), random.getstate()
    seed = int(cell.key, 16)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**63)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                result = {"status": "ok", **WORK[cell.kind](cell, job, tmp, model_files)}
            except NotApplicable as e:  # a setting no real client runs: recorded, not retried
                result = {"status": NOT_APPLICABLE, "error": str(e)}
            except Exception as e:  # noqa: BLE001 — any failure of one cell is recorded, the others go on
                text = " ".join(str(e).split())[:300]
                result = {"status": "failed",
                          "error": text if isinstance(e, SegauditError) else f"{type(e).__name__}: {text}"}
        files, dirs = {}, {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp)
            if rel.parts[0] == "models":
                folder = dirs.setdefault(Path(*rel.parts[:2]).as_posix(), {})
                folder[Path(*rel.parts[2:]).as_posix()] = path.read_bytes()
            else:
                files[rel.as_posix()] = path.read_bytes()
        if result["status"] != "ok":
            files, dirs = {}, {}
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"key": cell.key, "kind": cell.kind, "settings": cell.settings, "result": result,
            "seconds": time.perf_counter() - start, "files": files, "dirs": dirs}


def _data(job: Job):
    key = (job.data, job.config.classes)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_dataset(job.data, classes=job.config.classes)
    return _DATA[key]


def fresh_model(name: str, job: Job, model_files: dict | None = None):
    """A fresh copy of the model ``name`` (loaded once per process; cells never share a mutable model)."""
    if model_files is not None:  # shipped by the driver: loaded from a scratch folder, removed at once
        ident = ("blob", hashlib.sha256(b"".join(model_files[k] for k in sorted(model_files))).hexdigest())
    else:
        path = Path(job.models[name])
        ident = ("path", str(path), path.stat().st_mtime_ns if path.exists() else None)
    mc = next(m for m in job.config.models if m.name == name)
    ident = (*ident, json.dumps(mc.preprocessing, sort_keys=True))
    if ident not in _MODELS:
        if len(_MODELS) > 2:
            _MODELS.clear()
        if model_files is not None:
            scratch = Path(tempfile.mkdtemp(prefix="segaudit-model-"))
            try:
                for fname, blob in model_files.items():
                    (scratch / fname).write_bytes(blob)
                _MODELS[ident] = load_checkpoint(scratch, mc)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            _MODELS[ident] = load_checkpoint(path, mc)
    return copy.deepcopy(_MODELS[ident])


def _work_train(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    s, data = cell.settings, _data(job)
    if not s["train_steps"]:  # a checkpoint: segaudit does not know its training split, so all the data is used
        model = fresh_model(s["model"], job, model_files)
        scores = evaluate(model, data, list(range(len(data))), eval_crop_size(data))
        return {"dice": scores["dice"], "iou": scores["iou"], "evaluated_on": "audit data", "images": len(data),
                "steps": None, "spec": _spec(model)}
    torch.manual_seed(0)
    model = build_model(s["arch"], encoder=s["encoder"], in_channels=data.channels, classes=data.num_classes,
                        preprocessing=s["preprocessing"])
    result = train_model(model, data, size=s["size"], steps=s["train_steps"], seed=0, progress=job.progress)
    save_model(result.model, tmp / "models" / _slug(s["model"]))
    return {"dice": result.dice, "iou": result.iou, "evaluated_on": "held-out split",
            "images": len(result.heldout_names), "steps": result.steps, "spec": _spec(result.model)}


def _work_attack(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    s, config, data = cell.settings, job.config, _data(job)
    model = fresh_model(s["model"], job, model_files)
    batch = _client_batch(data, config, model, s["batch_size"], s["image"], s["seed"])
    knowledge = attacker_data(data, batch, config.size, fit=_fit(data, config.size), norm=normalisation(model),
                              seed=s["seed"])
    protocol = ClientProtocol(s["mode"], local_steps=s["local_steps"], lr=config.lr, client_mode=s["client_mode"])
    outcome = attack_batch(model, batch, s["attack"], protocol, knowledge=knowledge, steps=s["steps"],
                           restarts=s["restarts"], seed=s["seed"], show_progress=False)
    rec = outcome.reconstruction
    grid = Path("artefacts") / f"{cell.key}.png"
    reconstruction_grid(batch, rec, tmp / grid, **(knowledge.score_kwargs() if knowledge else {}),
                        title=f"{s['attack']} on {s['model']}, {s['mode']}, batch {s['batch_size']}")
    return {"metrics": outcome.metrics, "identification": outcome.identification, "threat": outcome.settings["threat"],
            "reconstruction_status": rec.status, "images": list(batch.names),
            "threads": torch.get_num_threads(), "artefacts": {"grid": grid.as_posix()}}


def _work_inference(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    s = cell.settings
    r = run_inference(fresh_model(s["model"], job, model_files), _data(job), s["attack"], prop=s["property"],
                      batch_size=s["batch_size"], updates=s["updates"], size=s["size"], seed=s["seed"],
                      show_progress=job.progress, protocol=ClientProtocol(client_mode=s["client_mode"]))
    summary = r.summary()
    return {k: summary[k] for k in ("auc", "auc_ci", "tpr_at_1pct_fpr", "composition_mae", "composition_mae_ci",
                                     "composition_mae_analytic", "runtime_s")}


def _work_layers(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    s, data = cell.settings, _data(job)
    model = fresh_model(s["model"], job, model_files)
    batch = _client_batch(data, job.config, model, 1, 0, s["seed"])
    report = layer_scores(model, batch, ClientProtocol(client_mode=s["client_mode"]), data=data, steps=s["steps"],
                          seed=s["seed"], show_progress=job.progress)
    chart = Path("artefacts") / f"{cell.key}-layers.png"
    layer_scores_chart(report, tmp / chart)
    return {"report": report.to_dict(), "artefacts": {"chart": chart.as_posix()}}


def _work_tradeoff(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    s = cell.settings
    model = fresh_model(s["model"], job, model_files)
    settings = TradeoffSettings(size=s["size"], batch_size=1, train_steps=s["train_steps"],
                                attack_steps=s["attack_steps"], client_mode=s["client_mode"], images=s["images"],
                                seed=s["seed"])
    row = run_tradeoff(model, _data(job), [s["defense"]], settings, progress=job.progress)[0]
    if row.get("name") == "dp":
        _, changes = make_private_model(copy.deepcopy(model))
        params = row.get("params", {})
        row["dp"] = {"epsilon": row.get("epsilon"), "delta": params.get("delta"),
                     "noise_multiplier": row.get("noise_multiplier"), "max_grad_norm": row.get("max_grad_norm"),
                     "sample_rate": row.get("sample_rate"), "steps": s["train_steps"],
                     "accountant": params.get("accountant"), "model_changes": changes}
    return {k: v for k, v in row.items() if k != "defense"}


#: kind -> what a cell of that kind computes: ``(cell, job, tmp, model_files) -> result fields``
WORK = {"train": _work_train, "attack": _work_attack, "inference": _work_inference, "layers": _work_layers,
        "tradeoff": _work_tradeoff}


def _client_batch(data, config: AuditConfig, model, batch_size: int, image: int, seed: int):
    """The ``image``-th client batch of ``batch_size`` crops of the held-out split (deterministic by image and
    seed), normalised as ``model`` was trained."""
    held = split(data, seed=0)[1]
    picks = [held[(image * batch_size + i) % len(held)] for i in range(batch_size)]
    return make_batch(data, picks, size=config.size, fit=_fit(data, config.size), seed=1000 * seed + image,
                      **normalisation(model))


def _fit(data, size: int) -> str:
    """Random crops when every image is large enough, else the image resized (see :func:`segaudit.data.make_batch`)."""
    return "crop" if data.min_size >= size else "resize"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]


def _spec(model) -> dict:
    return {**model_spec(model), "parameters": sum(p.numel() for p in model.parameters())}
