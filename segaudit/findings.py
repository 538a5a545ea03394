"""Findings drawn from an audit's ``results.json`` dict: the traffic-light risk level and recommendations.

Both read only measured values. Unknown keys are ignored; a missing section is reported as missing,
never filled in with a guess.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .config import MALICIOUS_SERVER
from .errors import NotApplicable

NOT_APPLICABLE = NotApplicable.STATUS
#: Gains over the attacker's baseline (:func:`segaudit.metrics.score`), read on a cell's mean over its images (3
#: by default): ``(high, medium)``. Each medium bar sits above the 99th percentile of cell means of guesses
#: that know nothing of the client (another real image of the data, the attack's output for another client),
#: each high bar above the largest such single image; ``bench/verdict_calibration.py``, docs/verdict.md.
PSNR_GAIN_DB = (3.0, 1.0)
SSIM_GAIN = (0.3, 0.15)
MASK_DICE_GAIN = (0.4, 0.2)
#: Re-identification: medium when the Wilson 95 % interval of the identified share lies above chance; high when,
#: in addition, at least this share of the images is picked out.
IDENTIFIED = 0.5
#: Inference-attack AUC thresholds ``(high, medium)``; the AUC's interval must also lie above 0.5.
AUC = (0.9, 0.7)
#: A formal guarantee: DP-SGD at ε at most this (and δ below 1 / training images).
DP_EPSILON = 10.0
LEVELS = ("high", "medium", "not shown", "low", "unknown")

UNDEFENDED = ("none", "", None)

RULE = (f"high if an undefended reconstruction beats the attacker's baseline by ≥ {PSNR_GAIN_DB[0]:g} dB PSNR, "
        f"≥ {SSIM_GAIN[0]:g} SSIM or ≥ {MASK_DICE_GAIN[0]:g} mask Dice (a cell's mean over its images), identifies ≥ "
        f"{IDENTIFIED:.0%} of the images with its interval above chance, or an inference attack reaches AUC ≥ "
        f"{AUC[0]:g}; medium at gains ≥ {PSNR_GAIN_DB[1]:g} dB, {SSIM_GAIN[1]:g}, {MASK_DICE_GAIN[1]:g}, an "
        f"identification interval above chance or AUC ≥ {AUC[1]:g} (AUC intervals above 0.5); not shown when "
        f"nothing beat its baseline; low only when, in addition, every attacked update carried DP-SGD at ε ≤ "
        f"{DP_EPSILON:g} with δ < 1/N; unknown when nothing was measured")


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


def honest_runs(results: dict) -> list[dict]:
    """Attack runs of the honest-but-curious server that finished (``status`` ok or absent)."""
    return [r for r in _list(results, "runs") if r.get("kind", "attack") == "attack"
            and r.get("status", "ok") == "ok" and not malicious(r)]


def malicious(entry: dict) -> bool:
    """Whether a run or cell is the malicious-server worst case (kept out of the verdict, shown apart)."""
    return entry.get("threat") == MALICIOUS_SERVER


def honest_cells(results: dict) -> list[dict]:
    """The cells of the honest-but-curious server: what the verdict reads."""
    return [c for c in _list(results, "cells") if not malicious(c)]


def worst_case(results: dict) -> list[dict]:
    """The malicious-server cells (``threat`` = :data:`~segaudit.config.MALICIOUS_SERVER`): labelled in the
    report, never read by the verdict."""
    return [c for c in _list(results, "cells") if malicious(c)]


def failed_runs(results: dict) -> list[dict]:
    """Attack runs that did not finish (a rerun retries them)."""
    return [r for r in _list(results, "runs") if r.get("status", "ok") not in ("ok", NOT_APPLICABLE)]


def inapplicable_runs(results: dict) -> list[dict]:
    """Attack runs whose setting no real client can run (e.g. train-mode BatchNorm on one value per channel)."""
    return [r for r in _list(results, "runs") if r.get("status") == NOT_APPLICABLE]


def _undefended(entry: dict) -> bool:
    return entry.get("defense") in UNDEFENDED


def risk(results: dict) -> dict:
    """The risk level of the audited updates, from what the attacks learned beyond what the attacker knew.

    Levels (thresholds in this module; ``RULE`` states them):

    * **high** / **medium**: an undefended reconstruction beats the attacker's best guess without the update
      (:func:`segaudit.metrics.score`'s ``*_gain``, a cell's mean), the attacker re-identifies the client's
      images among distractors more often than chance (Wilson interval), or an inference attack separates
      updates (AUC, interval above 0.5).
    * **not shown**: something was measured and none of it beat its baseline. The attacks tried did not show
      leakage; that is not evidence of privacy (``statement`` says so, ``not_tried`` what was not tried).
    * **low**: not shown, and every attacked update carried DP-SGD at ε ≤ :data:`DP_EPSILON` with δ < 1/N: a
      formal guarantee, not only an attack that failed.
    * **unknown**: nothing was measured against a baseline.

    Why these numbers (``bench/verdict_calibration.py``, docs/verdict.md): guesses that know nothing of the
    client — another real image of the same data with its mask, or the attack's output for another client —
    score gains whose cell means (3 images) stay below every medium bar in 99 % of cells, and no single such
    guess reaches a high bar in PSNR; the ``seg`` attack on an untrained U-Net's eval-mode updates clears them
    (a 3.5 dB gain there shows the nuclei and their mask, Dice 0.94, plainly). SSIM and mask Dice need higher
    bars than PSNR because a real image of the data already shares texture and structure with the truth.
    Re-identification is judged against chance by its Wilson interval. The verdict reads a cell's mean rather
    than its best image: the best of many images of a noisy metric would raise false alarms.

    Returns:
        ``{"level", "rule", "worst", "reasons", "missing", "statement", "not_tried"}``.
    """
    subject, defended, undefended = _verdict_subject(results)
    found, missing, worst = _gain_findings(subject)
    identified, identified_worst = _identification_findings(results, undefended)
    inferred, inference_missing, inference_worst = _inference_findings(results, undefended)
    found += identified + inferred
    missing += inference_missing
    worst |= identified_worst | inference_worst
    level = _level(found, bool(worst), undefended, defended, results)
    return {"level": level, "rule": RULE, "worst": worst, "reasons": [t for lvl, t in found if lvl == level],
            "missing": missing, "statement": _statement(level), "not_tried": not_tried(results)}


def _verdict_subject(results: dict) -> tuple[list[dict], list[dict], bool]:
    """``(subject, defended, undefended)``: the entries the verdict reads, the defended attacked updates, and whether
    undefended updates were measured (they decide; only when none was do the defended ones, a DP deployment)."""
    runs = [r for r in honest_runs(results) if _undefended(r)]
    cells = [c for c in honest_cells(results) if _undefended(c)]
    trade = [{**t, "psnr_gain": t.get("attack_psnr_gain"), "mask_dice_gain": t.get("attack_mask_dice_gain"),
              "attack": t.get("attack") or "trade-off attack"} for t in _list(results, "tradeoff")]
    source = (cells or runs) + [t for t in trade if _undefended(t)]
    defended = [r for r in honest_runs(results) if not _undefended(r)] + [t for t in trade if not _undefended(t)]
    undefended = bool(source) or any(_undefended(r) for r in _list(results, "inference"))
    subject = source if undefended else defended
    return subject, defended, undefended


def _gain_findings(subject: list[dict]) -> tuple[list[tuple[str, str]], list[str], dict[str, Any]]:
    """``(found, missing, worst)`` of the gains over the attacker's baseline: ``(level, reason)`` pairs at or above
    the medium bars, the gains not measured, and the largest of each with the setting of the first one found."""
    found: list[tuple[str, str]] = []
    missing: list[str] = []
    worst: dict[str, Any] = {}
    for key, label, (high, medium), unit in (("psnr_gain", "PSNR gain", PSNR_GAIN_DB, " dB"),
                                             ("ssim_gain", "SSIM gain", SSIM_GAIN, ""),
                                             ("mask_dice_gain", "mask Dice gain", MASK_DICE_GAIN, "")):
        values = [(v, e) for e in subject if (v := _metric(e, key)) is not None]
        if not values:
            missing.append(f"attack {label} over a baseline")
            continue
        value, entry = max(values, key=lambda p: p[0])
        worst[key] = value
        if "model" not in worst:  # the configuration of the first metric's best image
            worst.update({k: entry.get(k) for k in ("model", "attack", "defense", "mode", "batch_size")
                          if entry.get(k) is not None})
            worst.update({k: v for k in ("psnr", "ssim", "mask_dice", "baseline_psnr", "baseline_mask_dice")
                          if (v := _metric(entry, k)) is not None})
        if value >= medium:
            where = f"{entry.get('attack', '?')} on {entry.get('model', '?')}, batch {entry.get('batch_size', '?')}"
            found.append(("high" if value >= high else "medium",
                          f"{label} {value:+.3g}{unit} over the attacker's baseline ({where})"))
    return found, missing, worst


def _identification_findings(results: dict, undefended: bool) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """``(found, worst)`` of re-identification: cells whose Wilson interval lies above chance, and the best rates."""
    found: list[tuple[str, str]] = []
    worst: dict[str, float] = {}
    for key, label in (("identification", "images"), ("mask_identification", "masks")):
        for cell in (c for c in honest_cells(results) if _undefended(c) == undefended):
            rate, ci, chance = _rate(cell.get(key))
            if rate is None:
                continue
            worst[f"{key}_rate"] = max(rate, worst.get(f"{key}_rate", 0.0))
            if ci[0] > chance:
                found.append(("high" if rate >= IDENTIFIED else "medium",
                              f"{rate:.0%} of the {label} re-identified (interval {ci[0]:.2f}–{ci[1]:.2f}, chance "
                              f"{chance:.1%}; {cell.get('attack', '?')} on {cell.get('model', '?')}, batch "
                              f"{cell.get('batch_size', '?')})"))
    return found, worst


def _inference_findings(results: dict, undefended: bool) -> tuple[list[tuple[str, str]], list[str], dict[str, Any]]:
    """``(found, missing, worst)`` of the inference attacks: AUCs at or above the medium bar with their interval
    above 0.5, "inference AUC" when none was measured, and the best AUC with its attack."""
    found: list[tuple[str, str]] = []
    worst: dict[str, Any] = {}
    inference = [r for r in _list(results, "inference") if _undefended(r) == undefended]
    aucs = [(v, r) for r in inference if (v := num(r.get("auc"))) is not None]
    if not aucs:
        return found, ["inference AUC"], worst
    value, row = max(aucs, key=lambda p: p[0])
    worst["inference_auc"], worst["inference_attack"] = value, row.get("attack")
    for v, r in aucs:
        ci = r.get("auc_ci")
        above = not (isinstance(ci, (list, tuple)) and len(ci) == 2
                     and num(ci[0]) is not None and num(ci[0]) <= 0.5)
        if v >= AUC[1] and above:
            found.append(("high" if v >= AUC[0] else "medium",
                          f"inference AUC {v:.2f} ({r.get('attack', '?')} {r.get('property') or ''} on "
                          f"{r.get('model', '?')}, batch {r.get('batch_size', '?')})".replace("  ", " ")))
    return found, [], worst


def _level(found: list[tuple[str, str]], measured: bool, undefended: bool, defended: list[dict],
           results: dict) -> str:
    """The level of :func:`risk` from its findings (see its docstring)."""
    levels = {lvl for lvl, _ in found}
    if "high" in levels or "medium" in levels:
        return "high" if "high" in levels else "medium"
    if not measured:
        return "unknown"
    if not undefended and defended and all(_guaranteed(e, results) for e in defended):
        return "low"
    return "not shown"


def _rate(value: Any) -> tuple[float | None, tuple[float, float], float]:
    """``(rate, Wilson interval, chance)`` of a cell's identification entry (rate None when absent)."""
    if not isinstance(value, dict) or num(value.get("rate")) is None or num(value.get("chance")) is None:
        return None, (0.0, 1.0), 1.0
    ci = value.get("ci") if isinstance(value.get("ci"), (list, tuple)) and len(value["ci"]) == 2 else (0.0, 1.0)
    return num(value["rate"]), (num(ci[0]) or 0.0, num(ci[1]) or 1.0), num(value["chance"])


def _guaranteed(entry: dict, results: dict) -> bool:
    """Whether an attacked update carried DP-SGD at ε ≤ DP_EPSILON and δ < 1/N (N: the data's images)."""
    dp = entry.get("dp") if isinstance(entry.get("dp"), dict) else {}
    eps, delta = num(dp.get("epsilon", entry.get("epsilon"))), num(dp.get("delta"))
    n = num((results.get("data") or {}).get("images")) if isinstance(results.get("data"), dict) else None
    return eps is not None and eps <= DP_EPSILON and delta is not None and (n is None or delta < 1 / n)


def _statement(level: str) -> str:
    if level == "not shown":
        return ("The attacks tried here did not show leakage beyond what the attacker knew without the update. "
                "This is not evidence of privacy: a stronger attack, a longer budget or a setting not tried may "
                "still recover the data; only a formal guarantee (DP-SGD) earns a low level.")
    if level == "low":
        return (f"Nothing was shown, and every attacked update carried DP-SGD at ε ≤ {DP_EPSILON:g}: a formal "
                "guarantee bounds what any attacker can learn from it.")
    if level == "unknown":
        return "Nothing was measured against a baseline, so no level is given."
    return "The attacks learned more about the client's data than an attacker knows without its update."


def not_tried(results: dict) -> list[str]:
    """Threat models and settings this audit did not try (from its config), for the 'not shown' statement."""
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    out = [] if worst_case(results) else ["a malicious server (one that alters the model it sends)"]
    out.append("colluding clients")
    if config:
        if "fedavg" not in (config.get("modes") or []):
            out.append("FedAvg weight updates")
        if config.get("client_mode") == "eval":
            out.append("clients in train mode (BatchNorm on batch statistics)")
        elif config.get("client_mode") == "train":
            out.append("clients in eval mode (the easier case for the attacker)")
        if num(config.get("attack_steps")) is not None:
            out.append(f"attack budgets above {config['attack_steps']} steps")
        sizes = config.get("batch_sizes") or []
        if sizes and max(sizes) < 8:
            out.append(f"batches larger than {max(sizes)}")
    return out


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
    level = risk(results)
    out = _risk_advice(level)
    for model, rows in _tradeoff(results).items():
        out += _defense_advice(model, rows)
        out += [line for row in rows if (line := _dp_advice(model, row))]
    out += _layer_advice(results)
    out += _batch_effect(results)
    out += _inference_advice(results)
    out += _run_status_advice(results)
    out += _level_advice(level)
    return out


def _risk_advice(level: dict) -> list[str]:
    """Keep undefended updates private when the risk is high or medium."""
    if level["level"] not in ("high", "medium"):
        return []
    return [f"Do not let clients share undefended updates of {level['worst'].get('model', 'the model')} "
            f"({level['level']} risk): {'; '.join(level['reasons'])}."]


def _defense_advice(model: str, rows: list[dict]) -> list[str]:
    """The defense of ``model``'s trade-off rows that stopped the attack at the least utility loss, or the best one
    that did not stop it."""
    base = next((r for r in rows if _undefended(r)), None)
    base_dice = num(base.get("utility_dice")) if base else None
    base_gain = num(base.get("attack_psnr_gain")) if base else None
    defended = [r for r in rows if not _undefended(r) and num(r.get("attack_psnr_gain")) is not None]
    safe = [r for r in defended if stops_attack(r) and num(r.get("utility_dice")) is not None]
    if safe:
        best = max(safe, key=lambda r: num(r["utility_dice"]))
        loss = (f"{base_dice - num(best['utility_dice']):.3f}" if base_dice is not None
                else "unknown (no undefended row)")
        tested = "the only defense tested" if len(defended) == 1 else f"of the {len(defended)} defenses tested"
        return [f"{model}: {tested}, {best.get('defense')} left the attack no better than the attacker's "
                f"baseline (PSNR gain {_fmt(num(best['attack_psnr_gain']), '+.1f')} dB, from "
                f"{_fmt(base_gain, '+.1f')} dB undefended) with the smallest utility loss: held-out Dice "
                f"{_fmt(num(best['utility_dice']), '.3f')} vs {_fmt(base_dice, '.3f')} (loss {loss})."]
    if defended:
        best = min(defended, key=lambda r: num(r["attack_psnr_gain"]))
        tested = (f"the only defense tested, {best.get('defense')}, did not stop the attack beating its baseline: "
                  "it left " if len(defended) == 1 else
                  f"none of the {len(defended)} defenses tested stopped the attack beating its baseline; "
                  f"the best, {best.get('defense')}, left ")
        return [f"{model}: {tested}a PSNR gain of {_fmt(num(best['attack_psnr_gain']), '+.1f')} dB "
                f"(utility Dice {_fmt(num(best.get('utility_dice')), '.3f')}). "
                "Test stronger settings (more noise, a smaller DP epsilon) before deployment."]
    return []


def _dp_advice(model: str, row: dict) -> str | None:
    """The DP-SGD parameters and outcome of a trade-off row with an epsilon (None without one)."""
    dp = _dp(row)
    eps = num(dp.get("epsilon")) if dp else num(row.get("epsilon"))
    if eps is None:
        return None
    changes = dp.get("model_changes") or []
    return (f"{model}: DP-SGD ({row.get('defense')}) achieved ε = {eps:.3g} "
            f"at δ = {_fmt(num(dp.get('delta')), 'g')} "
            f"(σ {_fmt(num(dp.get('noise_multiplier')))}, C {_fmt(num(dp.get('max_grad_norm')), 'g')}, "
            f"q {_fmt(num(dp.get('sample_rate')))}, {dp.get('steps', '?')} steps, "
            f"{dp.get('accountant', '?')} accountant); "
            f"utility Dice {_fmt(num(row.get('utility_dice')), '.3f')}, attack PSNR "
            f"{_fmt(num(row.get('attack_psnr')), '.1f')} dB"
            + (f"; the model was changed for it ({', '.join(map(str, changes))})." if changes else "."))


def _layer_advice(results: dict) -> list[str]:
    """Per model, the layer groups that leak most: share them only through secure aggregation, or freeze them."""
    out = []
    layers = results.get("layers") if isinstance(results.get("layers"), dict) else {}
    for model, report in layers.items():
        groups = [g for g in (report.get("groups") or []) if isinstance(g, dict) and num(g.get("score")) is not None] \
            if isinstance(report, dict) else []
        if len(groups) < 1:
            continue
        groups.sort(key=lambda g: -num(g["score"]))
        top = ", ".join(f"{g.get('name')} (score {num(g['score']):.2f}"
                        + (f", attack PSNR {num(g.get('attack_psnr')):.1f} dB"
                           if num(g.get("attack_psnr")) is not None else "")
                        + ")" for g in groups[:max(1, min(3, len(groups) - 1))])
        one = max(1, min(3, len(groups) - 1)) == 1
        out.append(f"{model}: the layer group{' that leaks most is' if one else 's that leak most are'} {top}; "
                   f"share {'it' if one else 'them'} only through secure aggregation, or freeze "
                   f"{'it' if one else 'them'} during federated fine-tuning"
                   + (f" (least exposed: {groups[-1].get('name')}, score {num(groups[-1]['score']):.2f})."
                      if len(groups) > 1 else "."))
    return out


def _inference_advice(results: dict) -> list[str]:
    """What each inference attack reached; aggregate updates before the server sees them when it is strong."""
    out = []
    for row in _list(results, "inference"):
        auc, mae = num(row.get("auc")), num(row.get("composition_mae"))
        if auc is None and mae is None:
            continue
        what = f"{row.get('attack', 'inference')} attack" + (f" on '{row['property']}'" if row.get("property") else "")
        tpr = num(row.get("tpr_at_1pct_fpr"))
        parts = ([f"AUC {auc:.2f}"] if auc is not None else []) + \
                ([f"TPR {tpr:.2f} at 1 % FPR"] if tpr is not None else []) + \
                ([f"class shares recovered within MAE {mae:.3g}"] if mae is not None else [])
        ci = row.get("auc_ci") if isinstance(row.get("auc_ci"), (list, tuple)) and len(row["auc_ci"]) == 2 else None
        strong = auc is not None and auc >= AUC[1] and (ci is None or (num(ci[0]) or 0.0) > 0.5)
        out.append(f"{row.get('model', 'model')}: the {what} "
                   f"(defense {row.get('defense') or 'none'}, batch {row.get('batch_size', '?')}) "
                   f"reached {', '.join(parts)}"
                   + ("; what a batch contains leaks even without image reconstruction — aggregate updates "
                      "over several clients (secure aggregation) before the server sees them." if strong else "."))
    return out


def _run_status_advice(results: dict) -> list[str]:
    """Runs that did not finish (rerun them) and runs that are not applicable (nothing missing)."""
    out = []
    failed = failed_runs(results)
    if failed:
        reasons = sorted({str(r.get("error") or r.get("status")) for r in failed})
        out.append(f"{len(failed)} of {len(_list(results, 'runs'))} runs did not finish ({'; '.join(reasons[:3])}); "
                   "their configurations are not in the figures above — rerun them before relying on this report.")
    skipped = inapplicable_runs(results)
    if skipped:
        reasons = sorted({str(r.get("error")) for r in skipped})
        out.append(f"{len(skipped)} of {len(_list(results, 'runs'))} runs are not applicable: "
                   f"{'; '.join(reasons[:3])}. "
                   "No client can share such an update, so nothing is missing from the verdict.")
    return out


def _level_advice(level: dict) -> list[str]:
    """What to do next when the level is unknown or not shown."""
    if level["level"] == "unknown":
        return [f"Nothing was measured against a baseline ({', '.join(level['missing'])}), so no risk level is "
                "given: run the audit with the 'none' defense."]
    if level["level"] == "not shown":
        return ["The attacks tried did not beat their baselines; before concluding anything, try what was not "
                f"tried here ({'; '.join(level['not_tried'])}), or train with DP-SGD for a guarantee."]
    return []


def stops_attack(row: dict) -> bool:
    """A defense works when the attack on its updates no longer beats the attacker's baseline (no positive PSNR or
    mask Dice gain) and picks the image out of its candidates no better than chance (the Wilson interval of the
    identification rate reaches down to the chance level)."""
    gains = [num(row.get(k)) for k in ("attack_psnr_gain", "attack_mask_dice_gain")]
    found = row.get("attack_identification") if isinstance(row.get("attack_identification"), dict) else {}
    ci, chance = found.get("ci"), num(found.get("chance"))
    above_chance = isinstance(ci, (list, tuple)) and len(ci) == 2 and chance is not None and \
        (num(ci[0]) or 0.0) > chance
    return any(g is not None for g in gains) and all(g is None or g <= 0 for g in gains) and not above_chance


def _batch_effect(results: dict) -> list[str]:
    """Undefended attack PSNR gain by batch size (cells, else runs), per model, attack and mode."""
    groups: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    cells = [c for c in honest_cells(results) if _undefended(c)]
    for entry in cells or [r for r in honest_runs(results) if _undefended(r)]:
        psnr, bs = _metric(entry, "psnr_gain"), entry.get("batch_size")
        if psnr is not None and isinstance(bs, int) and not isinstance(bs, bool):
            groups[(entry.get("model"), entry.get("attack"), entry.get("mode", "fedsgd"))][bs].append(psnr)
    out = []
    for (model, attack, mode), by_bs in groups.items():
        if len(by_bs) < 2:
            continue
        sizes = sorted(by_bs)
        means = [sum(by_bs[b]) / len(by_bs[b]) for b in sizes]
        trend = ", ".join(f"{m:+.1f} dB at batch {b}" for b, m in zip(sizes, means))
        safe = next((b for b, m in zip(sizes, means) if m <= 0), None)
        out.append(f"{model}: undefended {attack} attack PSNR gain over the baseline ({mode}) by batch size: {trend}; "
                   + (f"from batches of {safe} images on the attack no longer beat its baseline (on average)."
                      if safe is not None else
                      "it beat its baseline at every batch size tested, "
                      "so larger batches alone are not a defense here."))
    return out
