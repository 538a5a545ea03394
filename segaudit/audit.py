"""One audit: from a config to a results store, ``results.json`` and a self-contained ``report.html``.

``run(config, out)`` trains (or loads) each model, then runs every cell — inversion attacks over modes,
batch sizes, images and seeds; inference attacks; per-layer scores; the defense trade-off — storing each
finished run in ``out/results.sqlite``. A rerun of the same config skips stored runs (resume); Ctrl-C loses at
most the run in progress. ``collect`` turns the store into the ``results.json`` dict the report renders.

The parts live apart: :mod:`segaudit.cells` (what one cell computes), :mod:`segaudit.executors` (where cells run),
:mod:`segaudit.results` (the ``results.json`` dict) and :mod:`segaudit.store` (the SQLite file); their names used
from here are re-exported.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attacks.inference import PropertySpec, crop_pool
from .cells import (
    NOT_APPLICABLE,
    Cell,
    Job,
    fresh_model,
    load_checkpoint,
    make_job,
    model_folder,
    run_cell,
    with_preprocessing,
)
from .checks import check_model_fits_data, model_source
from .config import AuditConfig
from .data import check_size_multiple, load_dataset
from .errors import SegauditError
from .executors import SequentialExecutor
from .io import atomic_dir, atomic_path, check_out_dir, check_replaceable, inside, write_json
from .metrics import MIN_INTERVAL_N
from .models import model_spec, save_model, size_rules
from .preprocessing import of as preprocessing_of
from .progress import progress as bar
from .report.html import write_html
from .results import CELL_METRICS, collect
from .store import ResultsStore

__all__ = ["CELL_METRICS", "MIN_INTERVAL_N", "NOT_APPLICABLE", "AuditResult", "Cell", "Job", "Log", "check_resume",
           "collect", "execute", "make_job", "materialised", "model_digest", "model_folder", "pending_training",
           "plan_cells", "plan_training", "preflight", "run", "run_cell", "save_outcome"]


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
    out = Path(out)
    store_path = out / "results.sqlite"
    resuming = store_path.exists() and not force
    in_memory = {mc.name: with_preprocessing(copy.deepcopy(mc.model), mc) for mc in config.models
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
    report = write_html(results, out / "report.html", base_dir=out, redact=redact)
    return AuditResult(results, out, report, counts, nothing_worked=bool(stage2) and not any(map(_measured, stage2)))


def _run_cells(config: AuditConfig, data, fingerprint: dict, out: Path, store: ResultsStore, executor, progress: bool,
               command: str, log: Log) -> tuple[dict, dict]:
    """Stage 1 (train or evaluate every model), then stage 2 (every other cell); the results and cell counts."""
    created = store.meta().get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    store.set_meta(config=config.to_dict(), config_hash=config.digest(), command=command, created=created,
                   data_hash=fingerprint["data"], model_hashes=fingerprint["models"])
    if executor is None:
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
        mc.name: model_digest(fresh_model(mc.name, job)) for mc in config.models
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
    models = []
    for mc in config.models:
        if mc.model is not None:
            spec = model_spec(mc.model)
            mc = dataclasses.replace(mc, model=None, arch=spec["arch"], encoder=spec["encoder"],
                                     checkpoint=str(model_folder(out, mc.name).resolve()))
        models.append(mc)
    return dataclasses.replace(config, models=tuple(models))


def preflight(config: AuditConfig, models: dict | None = None):
    """Load the data and every given model, and refuse what does not fit, before the audit writes anything.

    Checks each checkpoint's input channels and classes against the data's, and that its input normalisation
    is known (recorded or given as ``preprocessing``).

    Returns:
        ``(dataset, {"data": data hash, "models": {name: model hash}})`` (models the audit trains are hashed after
        training).
    """
    data = load_dataset(config.data, classes=config.classes)
    if config.property and config.inference:
        PropertySpec.parse(config.property, data.class_names)
    hashes = {}
    for mc in config.models:
        model = (models or {}).get(mc.name)
        if model is None and mc.checkpoint:
            model = load_checkpoint(mc.checkpoint, mc)
        if model is None:
            check_size_multiple(config.size, size_rules(mc.arch, mc.encoder).output_stride)
            continue
        where = "the model given in memory" if mc.name in (models or {}) else model_source(mc.checkpoint)
        check_model_fits_data(model, data, where)
        preprocessing_of(model, source=mc.checkpoint if mc.name not in (models or {}) else None)
        spec = model.segaudit_spec
        check_size_multiple(config.size, size_rules(spec["arch"], spec["encoder"], **spec["options"]).output_stride)
        hashes[mc.name] = model_digest(model)
    return data, {"data": data.digest(), "models": hashes}


def model_digest(model) -> str:
    """A short hash of a model's spec (preprocessing included) and every tensor of its state dict."""
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


def _default_property(data, config: AuditConfig) -> str:
    """``<last class>>X`` with X the median share of that class in the data's crops: a balanced question."""
    pool = crop_pool(data, list(range(len(data))), config.size, 4, seed=0)
    k = data.num_classes - 1
    median = float((pool.masks == k).flatten(1).double().mean(1).median())
    return f"{data.class_names[k]}>{median:.2f}"


def execute(executor, cells: list[Cell], job: Job, store: ResultsStore, out: Path, log: Log,
            progress: bool = False, desc: str = "cells") -> int:
    """Run ``cells`` on ``executor`` and store each result as it arrives (the driver is the only writer).

    Returns the number of failed cells. Files a cell made are written before its row, so a stored row's
    artefacts exist; Ctrl-C leaves only whole rows.
    """
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


def save_outcome(done: dict, store: ResultsStore, out: Path) -> None:
    """Write a finished cell's files (atomically) and then its row."""
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
