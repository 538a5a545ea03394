"""The self-contained HTML audit report: one file, inline CSS, images as ``data:`` URIs, nothing fetched.

Every string from the results (model, class, file and defense names) is untrusted: the template is
rendered with autoescape and the page carries a Content-Security-Policy that allows no scripts and no
network loads. Artefact images are read only when they are PNG files inside ``base_dir``. JSON in, HTML out:
reading results is :mod:`segaudit.results` (``read_results`` is re-exported here).

Example:
    >>> from segaudit.report.html import read_results, write_html
    >>> results, base = read_results("reports/demo/results.json")
    >>> write_html(results, "reports/demo/report.html", base_dir=base, redact=True)
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import findings
from ..errors import SegauditError
from ..findings import num
from ..io import write_text
from ..results import read_results
from .plots import layer_scores_chart, tradeoff_frontier

TEMPLATE = "report.html.j2"
MAX_GRIDS = 24  # reconstruction grids embedded (the rest are counted in a note)
MAX_PNG_BYTES = 8 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

__all__ = ["MAX_GRIDS", "MAX_PNG_BYTES", "PNG_MAGIC", "TEMPLATE", "context", "png_data_uri", "read_results", "render",
           "write_html"]


def write_html(results: dict, path: str | os.PathLike, *, base_dir: str | os.PathLike | None = None,
               redact: bool = False) -> Path:
    """Render ``results`` (the ``results.json`` dict) into one self-contained HTML file, atomically.

    Args:
        results: the audit results; unknown keys are ignored, missing sections say "not measured".
        path: the ``.html`` file to write.
        base_dir: the folder artefact paths are relative to (that of results.json); None embeds no
            artefact image.
        redact: leave out the reconstruction images (they show patient data); the report says so.
    """
    if not isinstance(results, dict):
        raise SegauditError(f"results must be a dict (the results.json object), got {type(results).__name__}")
    return write_text(path, render(results, base_dir=base_dir, redact=redact))


def render(results: dict, *, base_dir: str | os.PathLike | None = None, redact: bool = False) -> str:
    """The report's HTML text (see :func:`write_html`)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("segaudit.report", "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["f"] = _format
    env.filters["ci"] = _format_ci
    return env.get_template(TEMPLATE).render(**context(results, base_dir=base_dir, redact=redact))


# --------------------------------------------------------------------------------------------------
# The template's context: plain, normalised values (numbers as float or None)


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _unpack_summary(value: Any) -> tuple[float | None, list | None]:
    """``(mean, ci)`` as plain numbers of a cell's ``{"mean", "ci", "n"}`` summary, or of a bare number (ci None)."""
    if isinstance(value, dict):
        ci = value.get("ci")
        ci = [num(ci[0]), num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
        return num(value.get("mean")), ci
    return num(value), None


def context(results: dict, *, base_dir=None, redact: bool = False) -> dict:
    """Everything the template shows, from ``results`` (tolerant of missing or malformed sections)."""
    notes: list[str] = []
    schema = results.get("schema")
    if schema not in (None, 1):
        notes.append(f"results schema {schema} is newer than this report knows (1); unknown fields are not shown")
    config = _dict(results.get("config"))
    runs = _dicts(results.get("runs"))
    cells = []
    for c in _dicts(results.get("cells")):
        row = {k: c.get(k) for k in ("model", "attack", "defense", "mode", "batch_size", "n")}
        row["malicious"] = findings.malicious(c)
        for key in ("psnr", "ssim", "mask_dice", "mask_iou", "mse", "baseline_psnr", "baseline_ssim",
                    "baseline_mask_dice", "psnr_gain", "ssim_gain", "mask_dice_gain"):
            row[key], row[key + "_ci"] = _unpack_summary(c.get(key))
        for key in ("identification", "mask_identification"):
            row[key] = _rate(c.get(key))
        cells.append(row)
    status = Counter(str(r.get("status", "ok")) for r in runs)
    return {
        "title": str(config.get("name") or "segaudit audit"),
        "results": results,
        "notes": notes,
        "redact": redact,
        "risk": findings.risk(results),
        "recommendations": findings.recommendations(results),
        "models": _models(results),
        "data": _dict(results.get("data")),
        "config": config,
        "threat": _threat(config, runs, results),
        "cells": cells,
        "has_mask_iou": any(c["mask_iou"] is not None for c in cells),
        "runs": {"total": len(runs), "status": dict(status)},
        "failed": findings.failed_runs(results),
        "skipped": _skipped(findings.inapplicable_runs(results)),
        "grids": _grids(runs, base_dir, redact),
        "layers": _layers(results),
        "tradeoff": _tradeoffs(results),
        "dp": _dp_rows(results),
        "inference": _dicts(results.get("inference")),
        "repro": _repro(results, config),
        "thresholds": {"psnr_gain": findings.PSNR_GAIN_DB, "ssim_gain": findings.SSIM_GAIN,
                       "mask_dice_gain": findings.MASK_DICE_GAIN, "auc": findings.AUC,
                       "identified": findings.IDENTIFIED, "dp_epsilon": findings.DP_EPSILON},
    }


def _models(results: dict) -> list[dict]:
    out = []
    for m in _dicts(results.get("models")):
        trained = _dict(m.get("trained"))
        classes = m.get("class_names") or _dict(results.get("data")).get("classes")
        prep = _dict(m.get("preprocessing"))
        out.append({**m, "trained": trained,
                    "class_names": [str(c) for c in classes] if isinstance(classes, list) else [],
                    "dice": num(trained.get("dice")), "iou": num(trained.get("iou")),
                    "evaluated_on": str(trained.get("evaluated_on") or ""), "eval_images": num(trained.get("images")),
                    "preprocessing": _describe_preprocessing(prep) if prep else None})
    return out


def _describe_preprocessing(prep: dict) -> str:
    def values(key):
        v = prep.get(key)
        return ", ".join(f"{x:g}" for x in v if num(x) is not None) if isinstance(v, list) else str(v)
    scale = num(prep.get("scale")) or 1.0
    return f"(v − [{values('mean')}]) / [{values('std')}], pixel values v in [0, {scale:g}]"


def _threat(config: dict, runs: list[dict], results: dict) -> dict:
    """What the simulated server saw: modes, batch sizes, local steps (from the config, else the runs)."""
    def values(key):
        listed = config.get(key + "s") if isinstance(config.get(key + "s"), list) else None
        found = listed or sorted({r.get(key) for r in runs if r.get(key) is not None}, key=str)
        return ", ".join(map(str, found))
    local = config.get("local_steps")
    if local is None:
        local = ", ".join(sorted({str(r["local_steps"]) for r in runs if r.get("local_steps") is not None}))
    return {"modes": values("mode"), "batch_sizes": values("batch_size"), "local_steps": local,
            "attacks": values("attack"), "defenses": values("defense"),
            "client_mode": config.get("client_mode") or values("client_mode"),
            "images": num(config.get("images")), "malicious": bool(findings.worst_case(results))}


def _grids(runs: list[dict], base_dir, redact: bool) -> dict:
    """Reconstruction grids of finished runs as data URIs (none when redacted), with notes on skipped files."""
    listed = [r for r in runs
              if r.get("status", "ok") == "ok" and isinstance(_dict(r.get("artefacts")).get("grid"), str)]
    if redact:
        return {"images": [], "notes": [], "listed": len(listed)}
    images, notes = [], []
    if listed and base_dir is None:
        notes.append("no results folder was given, so the reconstruction images were not embedded")
        listed = []
    for run in listed:
        if len(images) == MAX_GRIDS:
            notes.append(f"{len(listed) - MAX_GRIDS} further reconstruction grids are not embedded "
                         f"(the report shows the first {MAX_GRIDS})")
            break
        rel = run["artefacts"]["grid"]
        uri, why = png_data_uri(rel, base_dir)
        if uri is None:
            notes.append(f"{rel}: {why}; not shown")
            continue
        m = _dict(run.get("metrics"))
        names = run.get("images")
        images.append({"uri": uri, "run": run, "psnr": num(m.get("psnr")), "ssim": num(m.get("ssim")),
                       "mask_dice": num(m.get("mask_dice")),
                       "names": [str(n) for n in names] if isinstance(names, list) else []})
    return {"images": images, "notes": notes, "listed": len(listed)}


def png_data_uri(rel: Any, base_dir: str | os.PathLike) -> tuple[str | None, str]:
    """``(data URI, "")`` for a PNG file at ``rel`` inside ``base_dir``, else ``(None, why)``.

    Absolute paths, paths (or links) leading outside ``base_dir``, other file types and files over
    ``MAX_PNG_BYTES`` are refused without being read.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return None, "not a file path"
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return None, "absolute path (artefact paths must be relative to the results folder)"
    base = Path(base_dir).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        return None, "path leads outside the results folder"
    if target.suffix.lower() != ".png":
        return None, "not a .png file"
    if not target.is_file():
        return None, "file not found"
    if target.stat().st_size > MAX_PNG_BYTES:
        return None, f"larger than {MAX_PNG_BYTES // 2**20} MiB"
    data = target.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return None, "not a PNG image"
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), ""


def _label(text: Any) -> str:
    """A chart label: matplotlib would parse ``$...$`` as maths."""
    return str(text).replace("$", r"\$")


def _chart(draw, *args) -> tuple[str | None, str]:
    """Run a ``plots`` function into a temporary PNG and return it as a data URI."""
    with tempfile.TemporaryDirectory(prefix="segaudit-report-") as tmp:
        try:
            path = draw(*args, Path(tmp) / "chart.png")
        except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as e:
            return None, f"the chart could not be drawn ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        return png_data_uri(path.name, tmp)


def _layers(results: dict) -> list[dict]:
    out = []
    for model, report in _dict(results.get("layers")).items():
        groups = []
        for g in _dicts(_dict(report).get("groups")):
            params = g.get("params")  # parameter names (layers.json) or a count
            groups.append({**g, "name": str(g.get("name", "?")), "kind": str(g.get("kind", "")),
                           "params": len(params) if isinstance(params, list) else num(params),
                           **{k: num(g.get(k)) for k in ("score", "attack_psnr", "rank_deficiency", "condition",
                                                         "sensitivity")}})
        if not groups:
            continue
        shown = SimpleNamespace(groups=[SimpleNamespace(name=_label(g["name"]), kind=g["kind"], score=g["score"])
                                        for g in groups])
        uri, why = _chart(layer_scores_chart, shown)
        out.append({"model": model, "groups": groups, "chart": uri, "chart_note": why})
    return out


def _tradeoffs(results: dict) -> list[dict]:
    by_model: dict[str, list[dict]] = {}
    for row in _dicts(results.get("tradeoff")):
        status = str(row.get("attack_status") or "")
        clean = {**row, "defense": str(row.get("defense", "?")),
                 **{k: num(row.get(k)) for k in ("epsilon", "utility_dice", "utility_iou", "attack_psnr",
                                                 "attack_mask_dice", "attack_ssim", "attack_psnr_gain",
                                                 "attack_mask_dice_gain")},
                 "stopped": findings.stops_attack(row) if num(row.get("attack_psnr_gain")) is not None else None,
                 "identified": _rate(row.get("attack_identification")),
                 "inapplicable": status.split(": ", 1)[-1] if status.startswith(findings.NOT_APPLICABLE) else None}
        by_model.setdefault(str(row.get("model") or "model"), []).append(clean)
    out = []
    for model, rows in by_model.items():
        base = next((r["utility_dice"] for r in rows if r["defense"] in ("none", "")), None)
        for r in rows:
            r["utility_loss"] = base - r["utility_dice"] if base is not None and r["utility_dice"] is not None else None
        plotted = [{**r, "defense": _label(r["defense"])} for r in rows]
        uri, why = _chart(tradeoff_frontier, plotted)
        out.append({"model": model, "rows": rows, "chart": uri, "chart_note": why})
    return out


def _skipped(runs: list[dict]) -> list[dict]:
    """Not applicable runs grouped by setting (model, attack, mode, batch), with their count and reason."""
    groups: dict[tuple, dict] = {}
    for r in runs:
        key = tuple(str(r.get(k) or "—") for k in ("model", "attack", "mode", "batch_size"))
        groups.setdefault(key, {"setting": key, "runs": 0, "reason": str(r.get("error") or "")})["runs"] += 1
    return list(groups.values())


def _rate(found: Any) -> dict | None:
    """An identification ``{"rate", "ci", "n", "chance"}`` with plain numbers (None when there is none)."""
    if not isinstance(found, dict) or num(found.get("rate")) is None:
        return None
    ci = found.get("ci")
    return {"rate": num(found.get("rate")), "n": num(found.get("n")), "chance": num(found.get("chance")),
            "ci": [num(ci[0]), num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None}


def _dp_rows(results: dict) -> list[dict]:
    """DP-SGD parameters of every private run: tradeoff rows and models trained with DP."""
    out = []
    sources = [(r.get("model"), r.get("defense"), r.get("dp")) for r in _dicts(results.get("tradeoff"))]
    sources += [(m.get("name"), "trained with DP", m.get("dp") or _dict(m.get("trained")).get("dp"))
                for m in _dicts(results.get("models"))]
    for model, defense, dp in sources:
        if not isinstance(dp, dict):
            continue
        changes = dp.get("model_changes")
        out.append({"model": model, "defense": defense, "accountant": dp.get("accountant"), "steps": dp.get("steps"),
                    "model_changes": [str(c) for c in changes] if isinstance(changes, list) else [],
                    **{k: num(dp.get(k))
                       for k in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate")}})
    return out


def _repro(results: dict, config: dict) -> dict:
    versions = _dict(results.get("versions"))
    return {"versions": {str(k): str(v) for k, v in versions.items()},
            "segaudit_version": results.get("segaudit_version"), "config_hash": results.get("config_hash"),
            "seeds": config.get("seeds", config.get("seed")), "command": results.get("command"),
            "data_hash": _dict(results.get("data")).get("data_hash"),
            "model_hashes": {str(m.get("name")): str(m["model_hash"]) for m in _dicts(results.get("models"))
                             if m.get("model_hash")},
            "threads": ", ".join(str(t) for t in results.get("threads") or []),
            "created": results.get("created"), "schema": results.get("schema"),
            "config_json": _compact_json(config) if config else None}


def _compact_json(obj: dict) -> str:
    """JSON with one top-level key per line (values on one line): short enough to print."""
    lines = [f"  {json.dumps(str(k))}: {json.dumps(v, default=str, ensure_ascii=False)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def _format(value: Any, spec: str = ".3g", unit: str = "") -> str:
    """A number for the page; missing values show as an em dash, text as itself (escaped by the template)."""
    if value is None:
        return "—"
    x = num(value)
    if x is None:
        return str(value)
    return f"{x:{spec}}{unit}"


def _format_ci(ci: Any, spec: str = ".3g") -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or num(ci[0]) is None or num(ci[1]) is None:
        return ""
    return f"[{num(ci[0]):{spec}}, {num(ci[1]):{spec}}]"
