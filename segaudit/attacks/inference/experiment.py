"""The experiment :func:`run_inference`: simulate shadow and target updates, fit the attack on the shadow ones,
score it on the target ones."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ...data import split
from ...defenses import Defense
from ...errors import SegauditError
from ...preprocessing import normalisation
from ...types import Batch, ClientProtocol, UpdateMeta
from .attacks import INFERENCE, InferenceAttack
from .cases import PropertySpec, Truth
from .scoring import bootstrap_auc, mean_ci, roc_scores
from .simulation import crop_pool, stream

SPLIT_BY_IMAGE = 48  # images needed to give the attacker and the clients disjoint images (12+ per quarter)


@dataclass
class InferenceResult:
    """An inference attack's success over many target updates.

    Attributes:
        auc, tpr_at_1pct_fpr: for the property / membership decision (None for composition without a property).
        auc_ci: 95 % bootstrap interval of the AUC.
        composition_mae: mean absolute error of the per-class shares (calibrated), with its 95 % interval;
            ``composition_mae_analytic`` without calibration.
        scores, labels: per target update, for the ROC curve.
    """

    attack: str
    batch_size: int
    updates: int
    property: str | None
    defense: dict
    settings: dict
    auc: float | None = None
    auc_ci: tuple[float, float] | None = None
    tpr_at_1pct_fpr: float | None = None
    composition_mae: float | None = None
    composition_mae_ci: tuple[float, float] | None = None
    composition_mae_analytic: float | None = None
    runtime_s: float = 0.0
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)

    def summary(self) -> dict:
        keys = ("attack", "batch_size", "updates", "property", "defense", "auc", "auc_ci", "tpr_at_1pct_fpr",
                "composition_mae", "composition_mae_ci", "composition_mae_analytic", "runtime_s")
        return {**{k: getattr(self, k) for k in keys}, **self.settings}


def run_inference(model: nn.Module, dataset, attack: str = "composition", *, prop: str | None = None,
                  batch_size: int = 8, updates: int = 200, shadow_updates: int | None = None, size: int = 64,
                  crops_per_image: int = 16, defense: Defense | None = None, seed: int = 0,
                  show_progress: bool = False, protocol: ClientProtocol | None = None,
                  **changes) -> InferenceResult:
    """Run one inference attack over ``updates`` simulated target updates and score it.

    Args:
        model: the global model (left untouched; the attacker and the clients use copies).
        dataset: from :func:`segaudit.data.load_dataset`; with 48 images or more, half of them are the
            attacker's (shadow and reference) and half the clients'; smaller datasets give each side its own
            random crops of every image (``settings["data_split"]`` records which).
        attack: ``"composition"``, ``"property"`` or ``"membership"``.
        prop: a :class:`PropertySpec` text (needed by ``"property"``; optional for ``"composition"``).
        shadow_updates: updates the attacker simulates to fit (default: ``updates``).
        protocol, **changes: the clients' protocol, as for :func:`segaudit.fl.client_update` (default: FedSGD
            in train mode).

    Example:
        >>> r = run_inference(model, load_dataset("nuclei"), "property", prop="nucleus>0.25", batch_size=8)
        >>> r.auc, r.tpr_at_1pct_fpr
    """
    start = time.perf_counter()
    protocol = ClientProtocol.of(protocol, **changes)
    attacker = INFERENCE.get(attack)
    spec = PropertySpec.parse(prop, dataset.class_names) if prop else None
    _check_counts(attack, attacker.question, spec, dataset.class_names, updates, shadow_updates, crops_per_image)
    reference_idx, simulation_idx, target_idx = _split_images(dataset, seed)
    _check_batch_size(batch_size, min(len(simulation_idx), len(target_idx)) * crops_per_image, crops_per_image)
    question = "membership" if attacker.question == "membership" else ("property" if spec else "none")
    common = dict(question=question, prop=spec, defense=defense, show_progress=show_progress, protocol=protocol)
    # the attacker's own crops: some make its shadow updates, others its reference (mean softmax, mean
    # gradient), so shadow candidates are never part of the reference, just as target candidates are not
    norm = normalisation(model)  # the clients' images, and the attacker's, as the model was trained
    public = crop_pool(dataset, simulation_idx, size, crops_per_image, seed + 1, **norm)
    reference = crop_pool(dataset, reference_idx, size, crops_per_image, seed + 3, **norm)
    private = crop_pool(dataset, target_idx, size, crops_per_image, seed + 2, **norm)
    if spec is not None and spec.threshold is None:
        spec = spec.at_median(reference, batch_size, seed)
        common["prop"] = spec
    # Updates are streamed: each is featurised as soon as it is made and dropped (see the package docstring).
    # Shadow first (the attacker fits before it sees a target); each stream draws from its own seeded
    # generator, so the order of the two streams does not change any update.
    attacker_model = copy.deepcopy(model)
    inference = attacker(spec)
    shadow_count = _fit_on_shadow(inference, model, attacker_model, public, reference, shadow_updates or updates,
                                  batch_size, seed, common)
    predictions, truths, meta = _predict_targets(inference, model, attacker_model, private, updates, batch_size,
                                                 seed, common)

    result = InferenceResult(attack, batch_size, updates, spec.text if spec else None,
                             meta.defense or {"name": "none"},
                             {"size": size, "shadow_updates": shadow_count, "seed": seed,
                              "data_split": "images" if len(dataset) >= SPLIT_BY_IMAGE else "crops",
                              **protocol.record()})
    _score(result, predictions, truths, seed)
    result.runtime_s = time.perf_counter() - start
    return result


def _check_counts(attack: str, question: str, spec: PropertySpec | None, class_names: tuple[str, ...],
                  updates: int, shadow_updates: int | None, crops_per_image: int) -> None:
    """Refuse a property attack without a property and too few updates or crops per image."""
    if question == "property" and attack != "composition" and spec is None:
        raise SegauditError(f"the {attack} attack needs a property, e.g. --property '{class_names[-1]}>0.2'")
    if 0 < updates < 2 and (spec is not None or question == "membership"):
        raise SegauditError(f"give at least 2 updates (one with and one without), got {updates}")
    if updates < 1 or (shadow_updates is not None and shadow_updates < 1):
        raise SegauditError(f"the number of updates must be at least 1, got {min(updates, shadow_updates or updates)}")
    if crops_per_image < 1:
        raise SegauditError(f"crops per image must be at least 1, got {crops_per_image}")


def _split_images(dataset, seed: int) -> tuple[list[int], list[int], list[int]]:
    """``(reference, simulation, target)`` image indices: the attacker's two quarters and the clients' half.

    The attacker's data and the clients' come from disjoint images when there are enough of them; a small
    dataset (the bundled ones hold 16-20 images) gives each side its own random crops of every image instead.
    """
    if len(dataset) >= SPLIT_BY_IMAGE:
        shadow_idx, target_idx = split(dataset, holdout=0.5, seed=seed)
        return shadow_idx[::2], shadow_idx[1::2], target_idx
    everything = list(range(len(dataset)))
    return everything, everything, everything


def _check_batch_size(batch_size: int, available: int, crops_per_image: int) -> None:
    """Refuse a batch larger than the ``available`` crops of the smaller side."""
    if not 1 <= batch_size <= available:
        raise SegauditError(f"batch size {batch_size} is outside 1..{available}: the attacker's and the clients' "
                            f"images give {available} crops ({crops_per_image} per image); use a smaller batch or "
                            "more --crops-per-image")


def _fit_on_shadow(inference: InferenceAttack, model: nn.Module, attacker_model: nn.Module, public: Batch,
                   reference: Batch, count: int, batch_size: int, seed: int, common: dict) -> int:
    """Fit ``inference`` on ``count`` shadow updates streamed from ``public``; returns how many it saw."""
    shadow_x, shadow_truths = [], []
    for case, truth in stream(model, public, count, batch_size, seed=seed + 20_000, desc="shadow updates", **common):
        if not shadow_x:
            inference.prepare(attacker_model, reference, case)
        shadow_x.append(inference.features(attacker_model, case))
        shadow_truths.append(truth)
        del case
    inference.fit_features(np.stack(shadow_x), shadow_truths)
    return len(shadow_truths)


def _predict_targets(inference: InferenceAttack, model: nn.Module, attacker_model: nn.Module, private: Batch,
                     count: int, batch_size: int, seed: int,
                     common: dict) -> tuple[list[dict], list[Truth], UpdateMeta]:
    """The fitted attack's prediction for each of ``count`` target updates streamed from ``private``, their
    truths, and the first update's meta (the protocol and defense, for the result; not the tensors)."""
    predictions, truths, meta = [], [], None
    for case, truth in stream(model, private, count, batch_size, seed=seed + 10_000, desc="target updates",
                              **common):
        if meta is None:
            meta = case.update.meta
        predictions.append(inference.predict_features(inference.features(attacker_model, case)))
        truths.append(truth)
        del case
    return predictions, truths, meta


def _score(result: InferenceResult, predictions: list[dict], truths: list[Truth], seed: int) -> None:
    """Fill ``result``'s AUC and TPR (when a label was asked) and composition errors (when predicted)."""
    labels = [t.label for t in truths]
    if labels[0] is not None:
        result.scores, result.labels = [p["score"] for p in predictions], labels
        result.auc, result.tpr_at_1pct_fpr = roc_scores(labels, result.scores)
        result.auc_ci = bootstrap_auc(labels, result.scores, seed=seed)
    if "composition" in predictions[0]:
        errors = [float((p["composition"] - t.composition).abs().mean()) for p, t in zip(predictions, truths)]
        result.composition_mae, result.composition_mae_ci = mean_ci(errors)
        result.composition_mae_analytic = float(np.mean(
            [float((p["composition_analytic"] - t.composition).abs().mean()) for p, t in zip(predictions, truths)]))
