"""Findings drawn from an audit's ``results.json`` dict: the traffic-light risk level and recommendations.

Both read only measured values. Unknown keys are ignored; a missing section is reported as missing,
never filled in with a guess.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

#: Reconstruction thresholds (attack on an undefended update). ``(high, medium)`` per metric.
PSNR_DB = (20.0, 15.0)
SSIM = (0.6, 0.3)
MASK_DICE = (0.8, 0.5)
#: Inference-attack AUC thresholds (undefended updates).
AUC = (0.9, 0.7)
#: A defense "stops" reconstruction when the attack's PSNR falls below this (dB).
SAFE_PSNR_DB = PSNR_DB[1]

UNDEFENDED = ("none", "", None)

RULE = (f"high if any undefended attack reaches PSNR ≥ {PSNR_DB[0]:g} dB, SSIM ≥ {SSIM[0]:g} or recovered-mask "
        f"Dice ≥ {MASK_DICE[0]:g} (best single image), or an undefended inference attack reaches AUC ≥ {AUC[0]:g}; "
        f"medium if any reaches PSNR ≥ {PSNR_DB[1]:g} dB, SSIM ≥ {SSIM[1]:g}, mask Dice ≥ {MASK_DICE[1]:g} or "
        f"AUC ≥ {AUC[1]:g}; low if every measured value is below these; unknown if nothing undefended was measured")


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, NaN, text, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _list(results: dict, key: str) -> list[dict]:
    value = results.get(key) if isinstance(results, dict) else None
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def _metric(entry: dict, key: str) -> float | None:
    """A metric of a run (``metrics[key]``) or of a cell (``key`` or ``key["mean"]``)."""
    value = entry.get("metrics", {}).get(key) if isinstance(entry.get("metrics"), dict) else None
    if value is None:
        value = entry.get(key)
    if isinstance(value, dict):
        value = value.get("mean")
    return num(value)


def ok_runs(results: dict) -> list[dict]:
    """Attack runs that finished (``status`` ok or absent)."""
    return [r for r in _list(results, "runs")
            if r.get("kind", "attack") == "attack" and r.get("status", "ok") == "ok"]


def failed_runs(results: dict) -> list[dict]:
    return [r for r in _list(results, "runs") if r.get("status", "ok") != "ok"]


def _undefended(entry: dict) -> bool:
    return entry.get("defense") in UNDEFENDED


def risk(results: dict) -> dict:
    """The traffic-light risk level of the audited model's undefended updates.

    Rule (thresholds in this module; ``RULE`` states them):

    * **high**: an attack on an undefended update reaches PSNR ≥ 20 dB, SSIM ≥ 0.6 or recovered-mask
      Dice ≥ 0.8 on some image, or an undefended inference attack reaches AUC ≥ 0.9;
    * **medium**: PSNR ≥ 15 dB, SSIM ≥ 0.3, mask Dice ≥ 0.5 or AUC ≥ 0.7;
    * **low**: every measured value is below the medium thresholds;
    * **unknown**: no undefended attack or inference result was measured (the level is not guessed).

    Why these numbers: at ≥ 20 dB PSNR a gradient-inversion reconstruction shows the structures of the
    image (as in the reconstruction grids of this report and of the gradient-inversion literature);
    below 15 dB it is dominated by artefacts, which is also the bar this report uses for a defense
    that works. SSIM is read with lower bars than usual because noisy but recognisable
    reconstructions score low on it. A mask
    Dice of 0.8 is about what a trained segmentation model reaches on held-out data, so the attacker
    recovers the patient's label map as well as the model itself would; 0.5 still gives the location
    and rough shape of the structures. An AUC of 0.9 means an attribute of the client's data is
    inferred reliably; 0.7 is a clear signal across many updates. The best single image (not the mean)
    decides, because one patient fully exposed is already a breach; cells (means) are used only when
    the results carry no per-image runs. The undefended row of a privacy-utility study counts too.

    Returns:
        ``{"level", "rule", "worst": {...}, "reasons": [str], "missing": [str]}``; ``worst`` holds the
        highest value of each metric and the configuration (model, attack, batch size, ...) of the
        best-PSNR image.
    """
    runs = [r for r in ok_runs(results) if _undefended(r)]
    source = (runs or [c for c in _list(results, "cells") if _undefended(c)]) + [{**t, "psnr": t.get("attack_psnr"), "ssim": t.get("attack_ssim"), "mask_dice": t.get("attack_mask_dice"),
                "attack": t.get("attack") or "trade-off attack"}
               for t in _list(results, "tradeoff") if _undefended(t)]  # the undefended row of a trade-off study
    worst: dict[str, Any] = {}
    missing: list[str] = []
    reasons: list[tuple[str, str]] = []
    levels = []
    best_psnr = None
    for entry in source:
        psnr = _metric(entry, "psnr")
        if psnr is not None and (best_psnr is None or psnr > best_psnr):
            best_psnr = psnr
            worst = {k: entry.get(k) for k in ("model", "attack", "defense", "mode", "batch_size", "seed", "image", "id")
                     if entry.get(k) is not None}
    for key, label, (high, medium), unit in (("psnr", "PSNR", PSNR_DB, " dB"), ("ssim", "SSIM", SSIM, ""),
                                             ("mask_dice", "mask Dice", MASK_DICE, "")):
        values = [(v, e) for e in source if (v := _metric(e, key)) is not None]
        if not values:
            missing.append(f"undefended attack {label}")
            continue
        value, entry = max(values, key=lambda p: p[0])
        worst[key] = value
        if not worst.get("model"):
            worst.update({k: entry.get(k) for k in ("model", "attack", "defense", "batch_size") if entry.get(k) is not None})
        level = "high" if value >= high else "medium" if value >= medium else "low"
        levels.append(level)
        if level != "low":
            bar = high if level == "high" else medium
            where = f"{entry.get('attack', '?')} on {entry.get('model', '?')}, batch {entry.get('batch_size', '?')}"
            reasons.append((level, f"{label} {value:.3g}{unit} ≥ {bar:g}{unit} ({where})"))
    aucs = [(v, r) for r in _list(results, "inference") if _undefended(r) and (v := num(r.get("auc"))) is not None]
    if aucs:
        value, row = max(aucs, key=lambda p: p[0])
        worst["inference_auc"] = value
        worst["inference_attack"] = row.get("attack")
        level = "high" if value >= AUC[0] else "medium" if value >= AUC[1] else "low"
        levels.append(level)
        if level != "low":
            reasons.append((level, f"inference AUC {value:.2f} ≥ {AUC[0] if level == 'high' else AUC[1]:g} "
                           f"({row.get('attack', '?')} {row.get('property') or ''}, batch {row.get('batch_size', '?')})".replace(" ,", ",")))
    else:
        missing.append("undefended inference AUC")
    if not levels:
        level = "unknown"
    else:
        level = "high" if "high" in levels else "medium" if "medium" in levels else "low"
    reasons_now = [text for lvl, text in reasons if lvl == level]  # the findings that set the level
    if not runs and source:
        missing.append("per-image runs (cell means used, so the best single image may be higher)")
    return {"level": level, "rule": RULE, "worst": worst, "reasons": reasons_now, "missing": missing}


def _fmt(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _tradeoff(results: dict) -> dict[str, list[dict]]:
    by_model: dict[str, list[dict]] = defaultdict(list)
    for row in _list(results, "tradeoff"):
        by_model[str(row.get("model") or "model")].append(row)
    return by_model


def _dp(row: dict) -> dict:
    dp = row.get("dp")
    return dp if isinstance(dp, dict) else {}


def recommendations(results: dict) -> list[str]:
    """Advice drawn from the measured numbers (each item quotes them); empty sections add nothing."""
    out: list[str] = []
    level = risk(results)
    worst = level["worst"]
    if level["level"] in ("high", "medium"):
        out.append(f"Do not let clients share undefended updates of {worst.get('model', 'the model')} "
                   f"({level['level']} risk): {'; '.join(level['reasons'])}.")
    for model, rows in _tradeoff(results).items():
        base = next((r for r in rows if _undefended(r)), None)
        base_dice = num(base.get("utility_dice")) if base else None
        base_psnr = num(base.get("attack_psnr")) if base else None
        defended = [r for r in rows if not _undefended(r) and num(r.get("attack_psnr")) is not None]
        safe = [r for r in defended if num(r["attack_psnr"]) < SAFE_PSNR_DB and num(r.get("utility_dice")) is not None]
        if safe:
            best = max(safe, key=lambda r: num(r["utility_dice"]))
            loss = f"{base_dice - num(best['utility_dice']):.3f}" if base_dice is not None else "unknown (no undefended row)"
            tested = "the only defense tested" if len(defended) == 1 else f"of the {len(defended)} defenses tested"
            out.append(f"{model}: {tested}, {best.get('defense')} brought the attack "
                       f"below {SAFE_PSNR_DB:g} dB PSNR ({_fmt(num(best['attack_psnr']), '.1f')} dB, from "
                       f"{_fmt(base_psnr, '.1f')} dB undefended) with the smallest utility loss: held-out Dice "
                       f"{_fmt(num(best['utility_dice']), '.3f')} vs {_fmt(base_dice, '.3f')} (loss {loss}).")
        elif defended:
            best = min(defended, key=lambda r: num(r["attack_psnr"]))
            tested = (f"the only defense tested, {best.get('defense')}, did not bring the attack below {SAFE_PSNR_DB:g} dB "
                      "PSNR: it left " if len(defended) == 1 else
                      f"none of the {len(defended)} defenses tested brought the attack below {SAFE_PSNR_DB:g} dB PSNR; "
                      f"the best, {best.get('defense')}, left ")
            out.append(f"{model}: {tested}"
                       f"{_fmt(num(best['attack_psnr']), '.1f')} dB (utility Dice {_fmt(num(best.get('utility_dice')), '.3f')}). "
                       "Test stronger settings (more noise, a smaller DP epsilon) before deployment.")
        for row in rows:
            dp = _dp(row)
            eps = num(dp.get("epsilon")) if dp else num(row.get("epsilon"))
            if eps is None:
                continue
            changes = dp.get("model_changes") or []
            out.append(f"{model}: DP-SGD ({row.get('defense')}) achieved ε = {eps:.3g} at δ = {_fmt(num(dp.get('delta')), 'g')} "
                       f"(σ {_fmt(num(dp.get('noise_multiplier')))}, C {_fmt(num(dp.get('max_grad_norm')), 'g')}, "
                       f"q {_fmt(num(dp.get('sample_rate')))}, {dp.get('steps', '?')} steps, {dp.get('accountant', '?')} accountant); "
                       f"utility Dice {_fmt(num(row.get('utility_dice')), '.3f')}, attack PSNR "
                       f"{_fmt(num(row.get('attack_psnr')), '.1f')} dB"
                       + (f"; the model was changed for it ({', '.join(map(str, changes))})." if changes else "."))
    layers = results.get("layers") if isinstance(results.get("layers"), dict) else {}
    for model, report in layers.items():
        groups = [g for g in (report.get("groups") or []) if isinstance(g, dict) and num(g.get("score")) is not None] \
            if isinstance(report, dict) else []
        if len(groups) < 1:
            continue
        groups.sort(key=lambda g: -num(g["score"]))
        top = ", ".join(f"{g.get('name')} (score {num(g['score']):.2f}"
                        + (f", attack PSNR {num(g.get('attack_psnr')):.1f} dB" if num(g.get("attack_psnr")) is not None else "")
                        + ")" for g in groups[:max(1, min(3, len(groups) - 1))])
        one = max(1, min(3, len(groups) - 1)) == 1
        out.append(f"{model}: the layer group{' that leaks most is' if one else 's that leak most are'} {top}; "
                   f"share {'it' if one else 'them'} only through secure aggregation, or freeze "
                   f"{'it' if one else 'them'} during federated fine-tuning"
                   + (f" (least exposed: {groups[-1].get('name')}, score {num(groups[-1]['score']):.2f})." if len(groups) > 1 else "."))
    out += _batch_effect(results)
    for row in _list(results, "inference"):
        auc, mae = num(row.get("auc")), num(row.get("composition_mae"))
        if auc is None and mae is None:
            continue
        what = f"{row.get('attack', 'inference')} attack" + (f" on '{row['property']}'" if row.get("property") else "")
        parts = ([f"AUC {auc:.2f}"] if auc is not None else []) + \
                ([f"TPR {num(row.get('tpr_at_1pct_fpr')):.2f} at 1 % FPR"] if num(row.get("tpr_at_1pct_fpr")) is not None else []) + \
                ([f"class shares recovered within MAE {mae:.3g}"] if mae is not None else [])
        strong = (auc is not None and auc >= AUC[1]) or (mae is not None and mae <= 0.05)
        out.append(f"{row.get('model', 'model')}: the {what} (defense {row.get('defense') or 'none'}, batch {row.get('batch_size', '?')}) "
                   f"reached {', '.join(parts)}"
                   + ("; what a batch contains leaks even without image reconstruction — aggregate updates "
                      "over several clients (secure aggregation) before the server sees them." if strong else "."))
    failed = failed_runs(results)
    if failed:
        reasons = sorted({str(r.get("error") or r.get("status")) for r in failed})
        out.append(f"{len(failed)} of {len(_list(results, 'runs'))} runs did not finish ({'; '.join(reasons[:3])}); "
                   "their configurations are not in the figures above — rerun them before relying on this report.")
    if level["level"] == "unknown":
        out.append(f"No undefended attack was measured ({', '.join(level['missing'])}), so no risk level is given: "
                   "run the audit with the 'none' defense.")
    return out


def _batch_effect(results: dict) -> list[str]:
    """Undefended attack PSNR by batch size (cells, else runs), per model, attack and mode."""
    groups: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    cells = [c for c in _list(results, "cells") if _undefended(c)]
    for entry in cells or [r for r in ok_runs(results) if _undefended(r)]:
        psnr, bs = _metric(entry, "psnr"), entry.get("batch_size")
        if psnr is not None and isinstance(bs, int) and not isinstance(bs, bool):
            groups[(entry.get("model"), entry.get("attack"), entry.get("mode", "fedsgd"))][bs].append(psnr)
    out = []
    for (model, attack, mode), by_bs in groups.items():
        if len(by_bs) < 2:
            continue
        sizes = sorted(by_bs)
        means = [sum(by_bs[b]) / len(by_bs[b]) for b in sizes]
        trend = ", ".join(f"{m:.1f} dB at batch {b}" for b, m in zip(sizes, means))
        safe = next((b for b, m in zip(sizes, means) if m < SAFE_PSNR_DB), None)
        out.append(f"{model}: undefended {attack} attack PSNR ({mode}) by batch size: {trend}; "
                   + (f"batches of {safe} or more images fell below {SAFE_PSNR_DB:g} dB." if safe is not None
                      else f"no batch size tested fell below {SAFE_PSNR_DB:g} dB, so larger batches alone are not a defense here."))
    return out
