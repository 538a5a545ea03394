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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import HONEST_SERVER, AuditConfig
from .errors import NotApplicable, SegauditError
from .store import ResultsStore, run_key

Log = Callable[[str], None]


@dataclass
class AuditResult:
    """An audit's outcome: the ``results.json`` dict and where its files are."""

    results: dict[str, Any]
    out: Path
    report: Path | None
    cells: dict[str, int] = field(default_factory=dict)  # planned, run (now), failed, left_out (model not trained)
    nothing_worked: bool = False  # no cell after training measured anything: the report rates nothing


    @property
    def risk(self) -> str | None:
        return (self.results.get("risk") or {}).get("level")


def run(config: AuditConfig, out: str | Path, *, force: bool = False, redact: bool = False, progress: bool = True,
        command: str = "", log: Log | None = None, executor=None, extend: bool = False) -> AuditResult:
    """Run (or resume) the audit ``config`` in the folder ``out``.

    Args:
        out: the audit folder: ``results.sqlite``, ``models/``, ``artefacts/``, ``results.json``, ``report.html``.
            A folder holding a store is resumed; any other non-empty folder is refused unless ``force``
            (which starts afresh).
        redact: leave client images out of the report (a report showing them would itself leak data).
        command: the command line, recorded for reproducibility.
        executor: runs the cells (see :mod:`segaudit.sweep`); default: one after another in this process.
        extend: resume a store made by another config (more seeds, a model fewer, ...), as a sweep grows its grid;
            the data and every shared model must still be the same, and only the current config's runs are shown.
            Without it, a store made by another config is refused.

    Example:
        >>> result = run(AuditConfig.quick(), "reports/quick")
        >>> result.risk, result.report
    """
    import copy

    from .io import check_out_dir, check_replaceable, write_json
    from .models import save_model

    out = Path(out)
    store_path = out / "results.sqlite"
    resuming = store_path.exists() and not force
    in_memory = {mc.name: _with_preprocessing(copy.deepcopy(mc.model), mc) for mc in config.models
                 if mc.model is not None}  # copies: the caller's model is left as it is
    config = materialised(config, out)
    data, fingerprint = preflight(config, in_memory)  # refuses a model that does not fit before any file is written
    if force and out.exists():
        check_replaceable(out)
        shutil.rmtree(out)
    elif not resuming:
        check_out_dir(out, force=False)
    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda _msg: None)
    try:
        store = ResultsStore(store_path)
        try:
            if resuming:
                changed = check_resume(store.meta(), config, fingerprint, out, extend)
                if changed:
                    log(f"extending the audit in {out}: {', '.join(changed[:5])} changed")
            for name, model in in_memory.items():
                save_model(model, model_folder(out, name))
            results, counts = _run_cells(config, data, fingerprint, out, store, executor, progress, command, log)
            planned = set(store.meta()["planned"])
            stage2 = [r for r in store.runs() if r["kind"] != "train" and r["key"] in planned]
        finally:
            store.close()
    except BaseException:
        if not resuming:
            _remove_if_nothing_finished(out, made_out)
        raise
    write_json(out / "results.json", results)
    report = None
    try:
        from .report.html import write_html
    except ImportError:  # the report module is optional while it is being built
        write_html = None
    if write_html is not None:
        report = write_html(results, out / "report.html", base_dir=out, redact=redact)
    return AuditResult(results, out, report, counts, nothing_worked=bool(stage2) and not any(map(_measured, stage2)))


def _run_cells(config: AuditConfig, data, fingerprint: dict, out: Path, store: ResultsStore, executor, progress: bool,
               command: str, log: Log) -> tuple[dict, dict]:
    """Stage 1 (train or evaluate every model), then stage 2 (every other cell); the results and cell counts."""
    created = store.meta().get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    store.set_meta(config=config.to_dict(), config_hash=config.digest(), command=command, created=created,
                   data_hash=fingerprint["data"], model_hashes=fingerprint["models"])
    if executor is None:
        from .sweep import SequentialExecutor

        executor = SequentialExecutor()
    job = make_job(config, out, progress=progress and executor.in_process)
    training = pending_training(config, out, store, fingerprint)
    for cell in training:
        log(f"training {cell.settings['model']} ({cell.settings['arch']}, {cell.settings['train_steps']} steps)"
            if cell.settings["train_steps"] else f"evaluating {cell.settings['model']}")
    execute(executor, training, job, store, out, log, progress, desc="training")
    stage1 = plan_training(config, fingerprint)
    trained = {c.settings["model"]: store.get(c.key) for c in stage1}
    broken = {m: (r or {}).get("error", "not trained") for m, r in trained.items() if not _measured(r)}
    if len(broken) == len(trained):
        name, error = next(iter(broken.items()))
        raise SegauditError(f"model {name!r}: {error}")
    for name, error in broken.items():
        log(f"model {name!r} is left out of the audit: {error}")
    fingerprint = {**fingerprint, "models": {**fingerprint["models"], **{
        mc.name: model_digest(_model(mc.name, job, None)) for mc in config.models
        if mc.name not in fingerprint["models"] and mc.name not in broken}}}
    store.set_meta(model_hashes=fingerprint["models"])
    planned = plan_cells(config, data, fingerprint)
    store.set_meta(planned=[c.key for c in [*stage1, *planned]])
    cells = [c for c in planned if c.settings["model"] not in broken and not _ok(store.get(c.key))]
    execute(executor, cells, job, store, out, log, progress and not executor.in_process)
    counts = {"planned": len(config.models) + len(planned), "run": len(training) + len(cells),
              "failed": len(broken) + sum(not _ok(store.get(c.key)) for c in cells),
              "left_out": sum(c.settings["model"] in broken for c in planned)}
    return collect(store, store.meta()), counts


def materialised(config: AuditConfig, out: str | Path) -> AuditConfig:
    """``config`` with every in-memory model replaced by the folder the audit saves it to (its checkpoint)."""
    import dataclasses

    from .models import model_spec

    models = []
    for mc in config.models:
        if mc.model is not None:
            spec = model_spec(mc.model)
            mc = dataclasses.replace(mc, model=None, arch=spec["arch"], encoder=spec["encoder"],
                                     checkpoint=str(model_folder(out, mc.name).resolve()))
        models.append(mc)
    return dataclasses.replace(config, models=tuple(models))


def _with_preprocessing(model, mc):
    """``model`` with the config's ``preprocessing`` override, if any, recorded in its spec (in place)."""
    from .preprocessing import Preprocessing, declare

    if mc.preprocessing is not None:
        channels = model.segaudit_spec["in_channels"]
        declare(model, Preprocessing.from_dict(mc.preprocessing, channels, f"model {mc.name!r}: 'preprocessing'"))
    return model


def _load(path: str | Path, mc):
    """The checkpoint ``path`` of the model config ``mc``, with its ``preprocessing`` override."""
    from .models import load_model

    return _with_preprocessing(load_model(path), mc)


def preflight(config: AuditConfig, models: dict | None = None):
    """Load the data and every given model, and refuse what does not fit, before the audit writes anything.

    Checks each checkpoint's input channels and classes against the data's, and that its input normalisation
    is known (recorded or given as ``preprocessing``).

    Returns:
        ``(dataset, {"data": data hash, "models": {name: model hash}})`` (models the audit trains are hashed after
        training).
    """
    from .checks import check_model_fits_data, model_source
    from .data import check_input_size, load_dataset
    from .models import size_rules
    from .preprocessing import of as preprocessing_of

    data = load_dataset(config.data, classes=config.classes)
    if config.property and config.inference:
        from .attacks.inference import PropertySpec

        PropertySpec.parse(config.property, data.class_names)
    hashes = {}
    for mc in config.models:
        model = (models or {}).get(mc.name)
        if model is None and mc.checkpoint:
            model = _load(mc.checkpoint, mc)
        if model is None:
            check_input_size(config.size, size_rules(mc.arch, mc.encoder).output_stride)
            continue
        where = "the model given in memory" if mc.name in (models or {}) else model_source(mc.checkpoint)
        check_model_fits_data(model, data, where)
        preprocessing_of(model, source=mc.checkpoint if mc.name not in (models or {}) else None)
        spec = model.segaudit_spec
        check_input_size(config.size, size_rules(spec["arch"], spec["encoder"], **spec["options"]).output_stride)
        hashes[mc.name] = model_digest(model)
    return data, {"data": data.digest(), "models": hashes}


def model_digest(model) -> str:
    """A short hash of a model's spec (preprocessing included) and every tensor of its state dict."""
    import hashlib
    import json

    from .models import model_spec

    h = hashlib.sha256(json.dumps(model_spec(model), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def check_resume(meta: dict, config: AuditConfig, fingerprint: dict, out: Path, extend: bool = False) -> list[str]:
    """Refuse to resume a store made from other data, of another model or (unless ``extend``) by another config,
    in one line that says which; returns the config keys that changed."""
    fix = "use --force to start afresh, or another --out"
    if "config" not in meta:
        raise SegauditError(f"{out / 'results.sqlite'} holds no audit config; {fix}")
    try:
        stored = AuditConfig.from_dict(meta["config"])
    except SegauditError as e:
        raise SegauditError(f"{out} holds an audit this segaudit cannot read ({e}); {fix}") from None
    differ = stored.differences(config)
    if differ and not extend:
        raise SegauditError(f"{out} holds an audit of another config ({', '.join(differ[:5])} differ); {fix}")
    if meta.get("data_hash") != fingerprint["data"]:
        raise SegauditError(f"the data differ from those audited in {out} (data hash {fingerprint['data']} "
                            f"against {meta.get('data_hash')}); {fix}")
    for name, digest in fingerprint["models"].items():
        if meta.get("model_hashes", {}).get(name) not in (None, digest):
            raise SegauditError(f"model {name!r} differs from the one audited in {out} (model hash {digest} "
                                f"against {meta['model_hashes'][name]}); {fix}")
    return differ


def _remove_if_nothing_finished(out: Path, made_out: bool) -> None:
    """After a failure: remove what the audit created when no run finished (an empty folder is left as found)."""
    store_path = out / "results.sqlite"
    if store_path.exists():
        store = ResultsStore(store_path)
        try:
            if any(_ok(r) for r in store.runs()):
                return
        finally:
            store.close()
    if made_out:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():  # the folder was empty (any other non-empty folder is refused)
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


# -- the plan: independent cells ---------------------------------------------------------------------------------

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


def plan_training(config: AuditConfig, fingerprint: dict | None = None) -> list[Cell]:
    """Stage 1: one cell per model — train it (cached in ``models/``), or evaluate its checkpoint.

    ``fingerprint`` (from :func:`preflight`) puts the data's and the checkpoints' hashes into the keys.
    """
    fp = fingerprint or {"data": None, "models": {}}
    return [Cell.of("train", {"model": mc.name, "arch": mc.arch, "encoder": mc.encoder, "checkpoint": mc.checkpoint,
                              "train_steps": mc.steps, "preprocessing": mc.preprocessing, "data": config.data,
                              "classes": config.classes, "size": config.size, "data_hash": fp["data"],
                              "model_hash": fp["models"].get(mc.name)})
            for mc in config.models]


def plan_cells(config: AuditConfig, data=None, fingerprint: dict | None = None) -> list[Cell]:
    """Stage 2: every attack, inference, layer and defense cell of ``config``, in report order.

    ``data`` (the loaded dataset) resolves the default inference property; loaded when not given.
    ``fingerprint`` (``{"data": hash, "models": {name: hash}}``) keys every cell by the data and model it used.
    """
    if data is None and config.inference and not config.property:
        from .data import load_dataset

        data = load_dataset(config.data, classes=config.classes)
    fp = fingerprint or {"data": None, "models": {}}
    cells = []
    for mc in config.models:
        # what every cell of this model depends on besides its own settings
        of = {"data": config.data, "classes": config.classes, "data_hash": fp["data"],
              "model_hash": fp["models"].get(mc.name), "lr": config.lr}
        for attack in config.attacks:
            for mode in config.modes:
                for b in config.batch_sizes:
                    for seed in config.seeds:
                        for image in range(config.images):
                            cells.append(Cell.of("attack", {**of,
                                "model": mc.name, "attack": attack, "defense": "none", "mode": mode, "batch_size": b,
                                "local_steps": config.local_steps if mode == "fedavg" else 1, "seed": seed,
                                "image": image, "steps": config.attack_steps, "restarts": config.restarts,
                                "client_mode": config.client_mode, "size": config.size}))
        if config.inference:
            prop = config.property or _default_property(data, config)
            for attack in config.inference:
                for b in config.inference_batch_sizes:
                    cells.append(Cell.of("inference", {**of,
                        "model": mc.name, "attack": attack, "batch_size": b, "updates": config.inference_updates,
                        "property": None if attack == "membership" else prop, "defense": "none",
                        "client_mode": config.client_mode, "size": config.size, "seed": config.seeds[0]}))
        if config.layers:
            cells.append(Cell.of("layers", {**of, "model": mc.name, "steps": config.layer_attack_steps,
                                            "client_mode": config.client_mode, "size": config.size,
                                            "seed": config.seeds[0]}))
        if config.defenses and config.defenses != ("none",):
            for spec in config.defenses:
                cells.append(Cell.of("tradeoff", {**of,
                    "model": mc.name, "defense": spec, "train_steps": config.tradeoff_train_steps,
                    "attack_steps": config.attack_steps, "client_mode": config.client_mode, "size": config.size,
                    "images": config.images, "seed": config.seeds[0]}))
    return cells


def make_job(config: AuditConfig, out: str | Path, progress: bool = False) -> Job:
    """The :class:`Job` of ``config`` run into ``out`` (paths made absolute)."""
    data = config.data
    if Path(data).exists():
        data = str(Path(data).resolve())
    models = {mc.name: str(Path(mc.checkpoint).resolve() if mc.checkpoint else model_folder(out, mc.name).resolve())
              for mc in config.models}
    return Job(config, data, models, progress)


def execute(executor, cells: list[Cell], job: Job, store: ResultsStore, out: Path, log: Log,
            progress: bool = False, desc: str = "cells") -> int:
    """Run ``cells`` on ``executor`` and store each result as it arrives (the driver is the only writer).

    Returns the number of failed cells. Files a cell made are written before its row, so a stored row's
    artefacts exist; Ctrl-C leaves only whole rows.
    """
    from .progress import progress as bar

    failed = 0
    for done in bar(executor.run(cells, job), desc=desc, total=len(cells), enabled=progress and len(cells) > 1):
        save_outcome(done, store, out)
        status = done["result"]["status"]
        if status != "ok":
            failed += status != NOT_APPLICABLE
            shown = ", ".join(f"{k} {v}" for k, v in done["settings"].items() if k not in _CONTEXT and v is not None)
            log(f"{done['kind']} ({shown}) {'is not applicable' if status == NOT_APPLICABLE else 'failed'}: "
                f"{done['result']['error']}")
    return failed


_CONTEXT = ("data", "classes", "data_hash", "model_hash", "lr")  # in every key, left out of messages
NOT_APPLICABLE = NotApplicable.STATUS


def save_outcome(done: dict, store: ResultsStore, out: Path) -> None:
    """Write a finished cell's files (atomically) and then its row."""
    from .io import atomic_dir, atomic_path, inside

    for rel, files in done.get("dirs", {}).items():
        with atomic_dir(inside(out, rel)) as tmp:
            for name, blob in files.items():
                inside(tmp, name).write_bytes(blob)
    for rel, blob in done.get("files", {}).items():
        with atomic_path(inside(out, rel)) as tmp:
            tmp.write_bytes(blob)
    store.put(done["key"], done["kind"], done["settings"], done["result"], done["seconds"])


def pending_training(config: AuditConfig, out: Path, store: ResultsStore,
                     fingerprint: dict | None = None) -> list[Cell]:
    """Training cells not stored yet (or whose model folder is gone)."""
    cells = plan_training(config, fingerprint)
    return [c for c, mc in zip(cells, config.models)
            if not _ok(store.get(c.key)) or (mc.trains and not model_folder(out, mc.name).exists())]


def _measured(row: dict | None) -> bool:
    """A stored row that holds a result."""
    return row is not None and row.get("status", "ok") == "ok"


def _ok(row: dict | None) -> bool:
    """A stored row that needs no rerun (failed cells are retried, not applicable ones are not; rows without a
    status predate it)."""
    return row is not None and row.get("status", "ok") in ("ok", NOT_APPLICABLE)


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
    import random
    import tempfile

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
                result = {"status": "ok", **_WORK[cell.kind](cell, job, tmp, model_files)}
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
    from .data import load_dataset

    key = (job.data, job.config.classes)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_dataset(job.data, classes=job.config.classes)
    return _DATA[key]


def _model(name: str, job: Job, model_files: dict | None):
    """A fresh copy of the model ``name`` (loaded once per process; cells never share a mutable model)."""
    import copy
    import hashlib
    import json
    import tempfile

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
                _MODELS[ident] = _load(scratch, mc)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            _MODELS[ident] = _load(path, mc)
    return copy.deepcopy(_MODELS[ident])


def _work_train(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    from .models import build_model, save_model
    from .train import evaluate, train_model

    s, data = cell.settings, _data(job)
    if not s["train_steps"]:  # a checkpoint: segaudit does not know its training split, so all the data is used
        model = _model(s["model"], job, model_files)
        scores = evaluate(model, data, list(range(len(data))), _eval_size(data))
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
    from .attacks.knowledge import attacker_data
    from .attacks.runner import attack_batch
    from .preprocessing import normalisation
    from .report.plots import reconstruction_grid

    s, config, data = cell.settings, job.config, _data(job)
    model = _model(s["model"], job, model_files)
    batch = _client_batch(data, config, model, s["batch_size"], s["image"], s["seed"])
    knowledge = attacker_data(data, batch, config.size, fit=_fit(data, config.size), norm=normalisation(model),
                              seed=s["seed"])
    outcome = attack_batch(model, batch, s["attack"], mode=s["mode"], local_steps=s["local_steps"], lr=config.lr,
                           train_mode=s["client_mode"] == "train", knowledge=knowledge, steps=s["steps"],
                           restarts=s["restarts"], seed=s["seed"], show_progress=False)
    rec = outcome.reconstruction
    grid = Path("artefacts") / f"{cell.key}.png"
    reconstruction_grid(batch, rec, tmp / grid, **(knowledge.score_kwargs() if knowledge else {}),
                        title=f"{s['attack']} on {s['model']}, {s['mode']}, batch {s['batch_size']}")
    return {"metrics": outcome.metrics, "identification": outcome.identification, "threat": outcome.settings["threat"],
            "reconstruction_status": rec.status, "images": list(batch.names),
            "threads": torch.get_num_threads(), "artefacts": {"grid": grid.as_posix()}}


def _work_inference(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    from .attacks.inference import run_inference

    s = cell.settings
    r = run_inference(_model(s["model"], job, model_files), _data(job), s["attack"], prop=s["property"],
                      batch_size=s["batch_size"], updates=s["updates"], size=s["size"], seed=s["seed"],
                      show_progress=job.progress, train_mode=s["client_mode"] == "train")
    summary = r.summary()
    return {k: summary[k] for k in ("auc", "auc_ci", "tpr_at_1pct_fpr", "composition_mae", "composition_mae_ci",
                                     "composition_mae_analytic", "runtime_s")}


def _work_layers(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    from .leakage import layer_scores
    from .report.plots import layer_scores_chart

    s, data = cell.settings, _data(job)
    model = _model(s["model"], job, model_files)
    batch = _client_batch(data, job.config, model, 1, 0, s["seed"])
    report = layer_scores(model, batch, data=data, steps=s["steps"], seed=s["seed"],
                          train_mode=s["client_mode"] == "train", show_progress=job.progress)
    chart = Path("artefacts") / f"{cell.key}-layers.png"
    layer_scores_chart(report, tmp / chart)
    return {"report": report.to_dict(), "artefacts": {"chart": chart.as_posix()}}


def _work_tradeoff(cell: Cell, job: Job, tmp: Path, model_files) -> dict:
    import copy

    from .tradeoff import TradeoffSettings, run_tradeoff

    s = cell.settings
    model = _model(s["model"], job, model_files)
    settings = TradeoffSettings(size=s["size"], batch_size=1, train_steps=s["train_steps"],
                                attack_steps=s["attack_steps"], client_mode=s["client_mode"], images=s["images"],
                                seed=s["seed"])
    row = run_tradeoff(model, _data(job), [s["defense"]], settings, progress=job.progress)[0]
    if row.get("name") == "dp":
        from .privacy import make_private_model

        _, changes = make_private_model(copy.deepcopy(model))
        params = row.get("params", {})
        row["dp"] = {"epsilon": row.get("epsilon"), "delta": params.get("delta"),
                     "noise_multiplier": row.get("noise_multiplier"), "max_grad_norm": row.get("max_grad_norm"),
                     "sample_rate": row.get("sample_rate"), "steps": s["train_steps"],
                     "accountant": params.get("accountant"), "model_changes": changes}
    return {k: v for k, v in row.items() if k != "defense"}


_WORK = {"train": _work_train, "attack": _work_attack, "inference": _work_inference, "layers": _work_layers,
         "tradeoff": _work_tradeoff}


def _default_property(data, config: AuditConfig) -> str:
    """``<last class>>X`` with X the median share of that class in the data's crops: a balanced question."""
    from .attacks.inference import crop_pool

    pool = crop_pool(data, list(range(len(data))), config.size, 4, seed=0)
    k = data.num_classes - 1
    median = float((pool.masks == k).flatten(1).double().mean(1).median())
    return f"{data.class_names[k]}>{median:.2f}"


def _client_batch(data, config: AuditConfig, model, batch_size: int, image: int, seed: int):
    """The ``image``-th client batch of ``batch_size`` crops of the held-out split (deterministic by image and
    seed), normalised as ``model`` was trained."""
    from .data import make_batch, split
    from .preprocessing import normalisation

    held = split(data, seed=0)[1]
    picks = [held[(image * batch_size + i) % len(held)] for i in range(batch_size)]
    return make_batch(data, picks, size=config.size, fit=_fit(data, config.size), seed=1000 * seed + image,
                      **normalisation(model))


def _fit(data, size: int) -> str:
    """Random crops when every image is large enough, else the image resized (see :func:`segaudit.data.make_batch`)."""
    return "crop" if data.min_size >= size else "resize"


def _slug(name: str) -> str:
    import hashlib

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]


def _spec(model) -> dict:
    from .models import model_spec

    return {**model_spec(model), "parameters": sum(p.numel() for p in model.parameters())}


def _eval_size(data) -> int:
    return max(32, min(256, data.min_size) // 32 * 32)


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


def _data_source(name: str) -> str:
    from .data import BUNDLED

    if name in BUNDLED:
        return f"bundled dataset '{name}' shipped with segaudit (provenance and licence: data/README.md)"
    return f"the auditor's folder {name}"


CELL_METRICS = ("psnr", "ssim", "mse", "mask_dice", "mask_iou", "baseline_psnr", "baseline_ssim", "baseline_mask_dice",
                "psnr_gain", "ssim_gain", "mask_dice_gain", "rdlv")
MIN_INTERVAL_N = 3  # below this a mean is shown as it is: "n = 1, no interval"


def _mean_ci(values: list[float]) -> dict[str, Any] | None:
    """Mean and its normal-approximation 95 % interval (``ci`` None below :data:`MIN_INTERVAL_N` values or with an
    infinite value, e.g. the PSNR of a perfect reconstruction)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return None
    mean = float(np.mean(v))
    if len(v) < MIN_INTERVAL_N or not math.isfinite(mean):
        return {"mean": mean, "ci": None, "n": len(v)}
    half = 1.96 * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(v)}


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
    from .data import load_dataset
    from .metrics import pooled_identification

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
              **{k: _mean_ci([r["metrics"].get(k) for r in rs]) for k in CELL_METRICS},
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
    try:
        from .report.findings import recommendations, risk
    except ImportError:
        return results
    results["risk"] = risk(results)
    results["recommendations"] = recommendations(results)
    return results
