"""What a server infers from an update without rebuilding the image: class composition and presence,
batch properties (shadow-model classifier) and membership of a known image.

The experiment: the dataset is split into the attacker's shadow half and the clients' target half. Many
client batches are drawn from each half; every client computes its update (optionally through a defense).
An :class:`InferenceAttack` is fitted on the shadow updates, whose truth the attacker knows (it made them),
then predicts each target update from a :class:`Case` — the update, the public prior and, for membership,
the candidate image — never from the target batch. Scores are compared with the truth afterwards.

Updates are streamed (:func:`stream`): each one is turned into the attack's feature vector
(:meth:`InferenceAttack.features`) as soon as it is simulated and then dropped, so memory does not grow
with the number of updates (a U-Net-resnet18 update is ~57 MB). Only the features and the truth are kept.
"""
from __future__ import annotations

import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..defenses import Defense, NoDefense
from ..errors import SegauditError
from ..fl import trainable_params
from ..losses import task_loss
from ..preprocessing import normalisation
from ..registry import Registry
from ..types import Batch, ClientUpdate, Prior
from .recovery import head_bias_name, mean_bias_gradient, mean_softmax

# -- the property ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PropertySpec:
    """A yes/no property of a client batch, parsed from ``CLASS>X`` or ``any:CLASS>X`` (``present:CLASS``).

    ``CLASS>X``: class CLASS covers more than the share X of the batch's pixels ("how large").
    ``any:CLASS>X``: at least one image has more than X of its pixels in CLASS ("a lesion is present");
    ``present:CLASS`` is ``any:CLASS>0``. CLASS is a class name or index. X may be ``median``: the median
    over the attacker's own random batches of that size (:meth:`at_median`), a balanced question.
    """

    cls: int
    threshold: float | None
    scope: str  # "batch" or "any"
    text: str

    @classmethod
    def parse(cls, spec: str, class_names: tuple[str, ...]) -> PropertySpec:
        text = spec.strip()
        m = re.fullmatch(r"present:(.+)", text)
        if m:
            return cls(_class_index(m.group(1), class_names), 0.0, "any", text)
        m = re.fullmatch(r"(any:)?([^<>]+)>\s*([0-9.eE+-]+|median)", text)
        if not m:
            raise SegauditError(f"property {spec!r} is not CLASS>X, any:CLASS>X or present:CLASS "
                                "(e.g. 'nucleus>0.2', 'nucleus>median', 'present:nucleus')")
        if m.group(3) == "median":
            return cls(_class_index(m.group(2), class_names), None, "any" if m.group(1) else "batch", text)
        try:
            threshold = float(m.group(3))
        except ValueError:
            raise SegauditError(f"property {spec!r}: {m.group(3)!r} is not a number") from None
        if not 0.0 <= threshold < 1.0:
            raise SegauditError(f"property {spec!r}: the share X must be in [0, 1), got {threshold}")
        return cls(_class_index(m.group(2), class_names), threshold, "any" if m.group(1) else "batch", text)

    def at_median(self, pool: Batch, batch_size: int, seed: int = 0, draws: int = 400) -> PropertySpec:
        """This property with ``X`` the median share over ``draws`` random batches of ``pool`` (per image for
        ``any:``)."""
        shares = (pool.masks == self.cls).flatten(1).double().mean(1)
        if self.scope == "any":
            median = float(shares.median())
        else:
            rng = np.random.default_rng(seed)
            size = min(batch_size, len(pool))
            median = float(np.median([float(shares[rng.choice(len(pool), size, replace=False)].mean())
                                      for _ in range(draws)]))
        return PropertySpec(self.cls, median, self.scope, f"{self.text} ({median:.3f})")

    def image_holds(self, masks: torch.Tensor) -> torch.Tensor:
        """Per image ``[N]`` bool: the image's share of the class exceeds the threshold."""
        return (masks == self.cls).flatten(1).double().mean(1) > self.threshold

    def holds(self, masks: torch.Tensor) -> bool:
        """Whether the batch ``[N,H,W]`` has the property."""
        if self.scope == "any":
            return bool(self.image_holds(masks).any())
        return float((masks == self.cls).double().mean()) > self.threshold


def _class_index(token: str, class_names: tuple[str, ...]) -> int:
    token = token.strip()
    if token in class_names:
        return class_names.index(token)
    if token.isdigit() and int(token) < len(class_names):
        return int(token)
    raise SegauditError(f"unknown class {token!r} in the property; the data's classes are: "
                        f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}")


# -- what the attacker sees, and the truth kept apart --------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One update as the attacker sees it: the update, the public prior and, for membership, the candidate.

    Attributes:
        candidate: a known image ``[1,C,H,W]`` with its mask ``[1,H,W]`` whose membership is asked, or None.
    """

    update: ClientUpdate
    prior: Prior
    candidate: Batch | None = None


@dataclass(frozen=True)
class Truth:
    """The truth behind one update, for fitting on shadow updates and for scoring target updates.

    Attributes:
        composition: per-class pixel share of the batch ``[K]``.
        label: the property holds / the candidate is a member (None when not asked).
    """

    composition: torch.Tensor
    label: bool | None = None


def crop_pool(dataset, indices: list[int], size: int, crops_per_image: int, seed: int, **norm) -> Batch:
    """``len(indices) * crops_per_image`` random, augmented ``size`` px crops of ``indices`` (the pool clients draw
    from), normalised with ``norm`` (``mean``/``std`` of :func:`segaudit.data.make_batch`; see
    :func:`segaudit.preprocessing.normalisation`)."""
    from ..data import make_batch

    picks = [i for i in indices for _ in range(crops_per_image)]
    return make_batch(dataset, picks, size=size, fit="crop", augment=True, seed=seed, foreground=0.5, **norm)


def stream(model: nn.Module, pool: Batch, count: int, batch_size: int, *, question: str = "none",
           prop: PropertySpec | None = None, defense: Defense | None = None, seed: int = 0,
           show_progress: bool = False, desc: str = "client updates", **protocol) -> Iterator[tuple[Case, Truth]]:
    """``count`` client updates on batches drawn from ``pool``, each with its truth, made one at a time.

    The arguments are checked at once; each update is computed only when the iterator is advanced, and the
    iterator keeps no reference to it afterwards: a consumer that drops each :class:`Case` once it has read
    it holds one update at a time.

    Args:
        question: ``"none"`` (random batches), ``"property"`` (half the batches have ``prop``) or
            ``"membership"`` (half the batches contain the case's candidate image).
        protocol: passed to the client, e.g. ``mode``, ``local_steps``, ``lr``, ``train_mode``.

    Returns:
        An iterator of ``(Case, Truth)``; the labels alternate True/False so both kinds are equally many.
    """
    if count < 1:
        raise SegauditError(f"the number of updates must be at least 1, got {count}")
    n = len(pool)
    if batch_size < 1 or batch_size > n:
        raise SegauditError(f"batch size {batch_size} is outside 1..{n}, the crops the data gives "
                            "(images x crops per image); use a smaller batch or more crops per image")
    defense = defense or NoDefense()
    rng = np.random.default_rng(seed)
    chooser = _batch_chooser(pool, batch_size, question, prop, rng)
    return _stream(model, pool, count, batch_size, question, chooser, defense, seed, show_progress, desc, protocol)


def _stream(model, pool, count, batch_size, question, chooser, defense, seed, show_progress, desc, protocol):
    from ..progress import progress

    for i in progress(range(count), desc=desc, enabled=show_progress):
        label = bool(i % 2 == 0) if question != "none" else None
        picks, candidate = chooser(label)
        batch = pool.subset(picks)
        update = defense.client_update(model, batch, seed=seed + i, **protocol)
        truth = torch.bincount(batch.masks.flatten(), minlength=pool.num_classes).double() / batch.masks.numel()
        cand = pool.subset([candidate]) if candidate is not None else None
        case = Case(update, Prior.from_batch_shape(batch), cand)
        del update, batch  # the case is the only reference this generator holds while suspended
        yield case, Truth(truth.float(), label)
        del case


def simulate(model: nn.Module, pool: Batch, count: int, batch_size: int, **kwargs) -> list[tuple[Case, Truth]]:
    """:func:`stream` as a list: every update is kept (memory grows with ``count``; for tests and small runs)."""
    return list(stream(model, pool, count, batch_size, **kwargs))


def _batch_chooser(pool: Batch, b: int, question: str, prop: PropertySpec | None, rng: np.random.Generator):
    """A function ``label -> (positions, candidate position)`` drawing batches with the asked truth."""
    n = len(pool)
    if question == "membership":
        if n < b + 1:
            raise SegauditError(f"membership needs more crops than the batch size ({n} <= {b}); use a smaller batch")

        def choose(member):
            candidate = int(rng.integers(n))
            others = rng.permutation(np.setdiff1d(np.arange(n), [candidate]))
            picks = [candidate, *others[: b - 1]] if member else list(others[:b])
            return [int(i) for i in rng.permutation(picks)], candidate
        return choose
    if question == "property" and prop.scope == "any":
        has = np.flatnonzero(prop.image_holds(pool.masks).numpy())
        lacks = np.setdiff1d(np.arange(n), has)
        if len(has) == 0 or len(lacks) < b:
            raise SegauditError(f"property {prop.text!r}: {len(has)} of {n} crops have it and {len(lacks)} lack it; "
                                f"a batch of {b} needs both kinds: choose another threshold or a smaller batch")

        def choose(positive):
            k = int(rng.integers(1, min(b, len(has)) + 1)) if positive else 0
            picks = [*rng.choice(has, k, replace=False), *rng.choice(lacks, b - k, replace=False)]
            return [int(i) for i in rng.permutation(picks)], None
        return choose
    if question == "property":  # rejection sampling of random batches until the asked label comes up
        def choose(positive):
            for _ in range(2000):
                picks = rng.choice(n, b, replace=False)
                if prop.holds(pool.masks[torch.as_tensor(picks)]) == positive:
                    return [int(i) for i in picks], None
            shares = (pool.masks == prop.cls).flatten(1).double().mean(1)
            raise SegauditError(f"property {prop.text!r} is {'never' if positive else 'always'} "
                                f"{'true' if positive else 'false'} for batches of {b}; choose a threshold near "
                                f"the median share {float(shares.median()):.3f}")
        return choose
    return lambda _label: ([int(i) for i in rng.choice(n, b, replace=False)], None)


SPLIT_BY_IMAGE = 48  # images needed to give the attacker and the clients disjoint images (12+ per quarter)
REFERENCE_CHUNK = 16  # reference images per backward pass when averaging gradients over them (bounds activations)


# -- the attacks -----------------------------------------------------------------------------------------------

class InferenceAttack(ABC):
    """Fitted on shadow updates (truth known to the attacker), then scores target cases one by one.

    The attack works on one update at a time, so updates can be streamed and dropped:

    1. :meth:`prepare` ``(model, reference, case)``: the state that does not depend on shadow updates (e.g.
       the model's mean softmax or mean gradient on the attacker's reference images); ``case`` is any one
       update, for its tensor names and protocol.
    2. :meth:`features` ``(model, case) -> [F]``: the feature vector of one update.
    3. :meth:`fit_features` ``(features [S,F], truths)``: learn from the shadow updates' features.
    4. :meth:`predict_features` ``(features [F]) -> dict``: score one target update's features.

    :meth:`fit` and :meth:`predict` do the same on a materialised list of cases.
    """

    question = "property"  # which truth the attack's score predicts: "property" or "membership"

    def __init__(self, prop: PropertySpec | None = None):
        self.prop = prop

    def prepare(self, model: nn.Module, reference: Batch, case: Case) -> InferenceAttack:
        """Set up what does not depend on the shadow updates, from the attacker's ``reference`` images."""
        return self

    @abstractmethod
    def features(self, model: nn.Module, case: Case) -> np.ndarray:
        """The feature vector ``[F]`` of one case (after :meth:`prepare`)."""

    def fit_features(self, features: np.ndarray, truths: Sequence[Truth]) -> InferenceAttack:
        """Learn from the shadow updates' ``features`` ``[S,F]`` and their ``truths``."""
        return self

    @abstractmethod
    def predict_features(self, features: np.ndarray) -> dict:
        """``{"score": float (higher = more likely True), "composition": [K] or absent}`` for one feature vector."""

    def fit(self, model: nn.Module, shadow: list[tuple[Case, Truth]], public: Batch) -> InferenceAttack:
        """Learn from the attacker's own simulated updates ``shadow`` (a materialised list); ``public``: its
        reference images for :meth:`prepare`. Same result as streaming them through :meth:`features`."""
        self.prepare(model, public, shadow[0][0])
        return self.fit_features(np.stack([self.features(model, c) for c, _ in shadow]), [t for _, t in shadow])

    def predict(self, model: nn.Module, case: Case) -> dict:
        """``{"score": float (higher = more likely True), "composition": [K] or absent}`` for one case."""
        return self.predict_features(self.features(model, case))


INFERENCE: Registry[InferenceAttack] = Registry("inference attack")


def update_as_gradient(update: ClientUpdate) -> dict[str, torch.Tensor]:
    """FedSGD gradients as they are; a FedAvg delta as the average gradient ``-delta / (lr * steps)``."""
    if update.meta.mode == "fedsgd":
        return update.tensors
    scale = -1.0 / (update.meta.lr * update.meta.local_steps)
    return {k: v * scale for k, v in update.tensors.items()}


@INFERENCE.register("composition")
class CompositionAttack(InferenceAttack):
    """Per-class pixel shares from the head bias gradient (``mean softmax - g``), then a linear calibration.

    Analytic: the mean softmax of the client's batch is stood in for by the model's mean softmax on the
    attacker's reference images. Calibrated: a least-squares map ``[analytic shares, g] -> true shares``
    fitted on the shadow updates, which absorbs the bias of trained models and FedAvg weight drift.
    The map is kept only if it beats the analytic shares in 5-fold cross-validation on the shadow updates.
    The property score is the calibrated share of the property's class.
    """

    def prepare(self, model, reference, case):
        self._bias = head_bias_name(model, case.update, case.prior.num_classes)
        self._softmax = mean_softmax(model, reference.images, case.update.meta.train_mode)
        return self

    def features(self, model, case):
        pixels = case.prior.image_shape[1] * case.prior.image_shape[2]
        g = mean_bias_gradient(case.update, self._bias, pixels)
        analytic = (self._softmax - g).clamp_min(0)
        analytic = analytic / analytic.sum().clamp_min(1e-12)
        return np.concatenate([analytic.numpy(), g.numpy()])

    def fit_features(self, features, truths):
        x = np.asarray(features)
        y = np.stack([t.composition.double().numpy() for t in truths])
        design = np.hstack([x, np.ones((len(x), 1))])
        k = y.shape[1]
        identity = np.vstack([np.eye(k), np.zeros((k + 1, k))])  # calibrated = analytic
        # keep the fitted map only if it beats the analytic shares on held-out shadow updates (5-fold)
        folds = np.arange(len(x)) % 5
        fitted_err = [np.abs(design[folds == f] @ np.linalg.lstsq(design[folds != f], y[folds != f], rcond=None)[0]
                             - y[folds == f]).mean() for f in range(5) if (folds != f).sum() > design.shape[1]]
        analytic_err = np.abs(x[:, :k] - y).mean()
        fitted = np.linalg.lstsq(design, y, rcond=None)[0]
        self._coef = fitted if fitted_err and np.mean(fitted_err) < analytic_err else identity
        return self

    def predict_features(self, features):
        f = np.asarray(features)
        k = len(self._softmax)
        calibrated = np.clip(np.append(f, 1.0) @ self._coef, 0, None)
        calibrated = calibrated / max(calibrated.sum(), 1e-12)
        score = float(calibrated[self.prop.cls]) if self.prop else math.nan
        return {"score": score, "composition": torch.as_tensor(calibrated, dtype=torch.float32),
                "composition_analytic": torch.as_tensor(f[:k], dtype=torch.float32)}


def update_features(update: ClientUpdate) -> np.ndarray:
    """Statistics of an update the property classifier reads: per tensor log-norm, mean and std, plus every
    1-D tensor of at most 64 entries whole (biases, norm scales, among them the head bias)."""
    feats = []
    for t in update_as_gradient(update).values():
        t = t.double()
        feats += [math.log(float(t.norm()) + 1e-12), float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0]
        if t.dim() == 1 and t.numel() <= 64:
            feats += t.tolist()
    return np.asarray(feats)


@INFERENCE.register("property")
class PropertyAttack(InferenceAttack):
    """Shadow-model property inference: a logistic regression on :func:`update_features`, trained on the
    attacker's updates with and without the property (Melis et al. 2019 style, for segmentation batches)."""

    def features(self, model, case):
        return update_features(case.update)

    def fit_features(self, features, truths):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = [t.label for t in truths]
        if len(set(labels)) < 2:
            raise SegauditError("the shadow updates hold only one kind of batch; give more updates")
        self._clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(features, labels)
        return self

    def predict_features(self, features):
        return {"score": float(self._clf.predict_proba(np.asarray(features)[None])[0, 1])}


@INFERENCE.register("membership")
class MembershipAttack(InferenceAttack):
    """Is a known image (with its mask) in the batch? Features, per tensor: the cosine similarity between the
    candidate's own gradient and the update, both centred on the mean gradient of the attacker's public images
    (the direction every image's gradient shares); gradients in eval mode. A member is ``1/N`` of a FedSGD
    update, so its centred gradient stands out of the others'. A logistic regression fitted on the attacker's
    shadow membership updates weighs the tensors; its probability is the score."""

    question = "membership"

    def prepare(self, model, reference, case):
        self._centre = self._mean_gradient(model, reference)
        return self

    @staticmethod
    def _mean_gradient(model, batch: Batch, chunk: int = REFERENCE_CHUNK) -> dict[str, torch.Tensor]:
        """The eval-mode gradient of the mean cross-entropy over ``batch``, ``chunk`` images per backward pass:
        the same gradient as one pass over the whole batch (up to float rounding), without holding the
        activations of every reference image at once (256 crops at 64 px: ~1.4 GB for a U-Net-resnet18)."""
        model.eval()
        params = trainable_params(model)
        total = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
        for start in range(0, len(batch), chunk):
            part = batch.subset(slice(start, start + chunk))
            value = task_loss(model(part.images), part.masks, "ce", "sum")
            for name, g in zip(params, torch.autograd.grad(value, list(params.values()))):
                total[name] += g.double()
        return {name: (t / batch.masks.numel()).to(params[name].dtype) for name, t in total.items()}

    def fit_features(self, features, truths):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        self._clf.fit(features, [t.label for t in truths])
        return self

    @staticmethod
    def _gradient(model, batch: Batch, loss: tuple[str, str]) -> dict[str, torch.Tensor]:
        model.eval()
        params = trainable_params(model)
        value = task_loss(model(batch.images), batch.masks, *loss)
        return dict(zip(params, torch.autograd.grad(value, list(params.values()))))

    def features(self, model, case):
        if case.candidate is None:
            raise SegauditError("the membership attack needs a candidate image")
        own = self._gradient(model, case.candidate, (case.update.meta.loss, case.update.meta.reduction))
        shared = update_as_gradient(case.update)
        return np.array([float(torch.nn.functional.cosine_similarity(
            (g - self._centre[k]).flatten().double(), (shared[k] - self._centre[k]).flatten().double(), dim=0))
            for k, g in own.items()])

    def predict_features(self, features):
        return {"score": float(self._clf.predict_proba(np.asarray(features)[None])[0, 1])}


# -- the experiment ----------------------------------------------------------------------------------------------

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


MIN_NEGATIVES_AT_1PCT = 100  # a 1 % false-positive rate is one false positive in 100 negative updates


def roc_scores(labels, scores) -> tuple[float, float | None]:
    """``(AUC, TPR at 1 % FPR)`` of ``scores`` (higher = positive) against boolean ``labels``.

    The TPR is None with fewer than :data:`MIN_NEGATIVES_AT_1PCT` negatives: so few cannot resolve a 1 % FPR.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    if labels.all() or not labels.any():
        raise SegauditError("AUC needs both positive and negative updates; give at least 2 updates")
    fpr, tpr, _ = roc_curve(labels, scores)
    resolvable = (~labels).sum() >= MIN_NEGATIVES_AT_1PCT
    return float(roc_auc_score(labels, scores)), float(tpr[fpr <= 0.01].max()) if resolvable else None


def bootstrap_auc(labels, scores, rounds: int = 500, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the AUC (resampling updates)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(len(labels), size=len(labels))
        if labels[idx].all() or not labels[idx].any():
            continue
        values.append(roc_auc_score(labels[idx], scores[idx]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def mean_ci(values) -> tuple[float, tuple[float, float]]:
    """Mean and its normal-approximation 95 % interval."""
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), (float(v.mean() - half), float(v.mean() + half))


def run_inference(model: nn.Module, dataset, attack: str = "composition", *, prop: str | None = None,
                  batch_size: int = 8, updates: int = 200, shadow_updates: int | None = None, size: int = 64,
                  crops_per_image: int = 16, defense: Defense | None = None, seed: int = 0,
                  show_progress: bool = False, **protocol) -> InferenceResult:
    """Run one inference attack over ``updates`` simulated target updates and score it.

    Args:
        model: the global model (left untouched; the attacker and the clients use copies).
        dataset: from :func:`segaudit.data.load_dataset`; with 48 images or more, half of them are the
            attacker's (shadow and reference) and half the clients'; smaller datasets give each side its own
            random crops of every image (``settings["data_split"]`` records which).
        attack: ``"composition"``, ``"property"`` or ``"membership"``.
        prop: a :class:`PropertySpec` text (needed by ``"property"``; optional for ``"composition"``).
        shadow_updates: updates the attacker simulates to fit (default: ``updates``).
        protocol: the clients' ``mode``, ``local_steps``, ``lr``, ``train_mode``, ``loss``.

    Example:
        >>> r = run_inference(model, load_dataset("nuclei"), "property", prop="nucleus>0.25", batch_size=8)
        >>> r.auc, r.tpr_at_1pct_fpr
    """
    import copy

    from ..data import split

    start = time.perf_counter()
    attacker = INFERENCE.get(attack)
    spec = PropertySpec.parse(prop, dataset.class_names) if prop else None
    if attacker.question == "property" and attack != "composition" and spec is None:
        raise SegauditError(f"the {attack} attack needs a property, e.g. --property '{dataset.class_names[-1]}>0.2'")
    if 0 < updates < 2 and (spec is not None or attacker.question == "membership"):
        raise SegauditError(f"give at least 2 updates (one with and one without), got {updates}")
    if updates < 1 or (shadow_updates is not None and shadow_updates < 1):
        raise SegauditError(f"the number of updates must be at least 1, got {min(updates, shadow_updates or updates)}")
    if crops_per_image < 1:
        raise SegauditError(f"crops per image must be at least 1, got {crops_per_image}")
    # The attacker's data and the clients' come from disjoint images when there are enough of them; a small
    # dataset (the bundled ones hold 16-20 images) gives each side its own random crops of every image instead.
    if len(dataset) >= SPLIT_BY_IMAGE:
        shadow_idx, target_idx = split(dataset, holdout=0.5, seed=seed)
        reference_idx, simulation_idx = shadow_idx[::2], shadow_idx[1::2]
    else:
        reference_idx = simulation_idx = target_idx = list(range(len(dataset)))
    available = min(len(simulation_idx), len(target_idx)) * crops_per_image
    if not 1 <= batch_size <= available:
        raise SegauditError(f"batch size {batch_size} is outside 1..{available}: the attacker's and the clients' "
                            f"images give {available} crops ({crops_per_image} per image); use a smaller batch or "
                            "more --crops-per-image")
    question = "membership" if attacker.question == "membership" else ("property" if spec else "none")
    common = dict(question=question, prop=spec, defense=defense, show_progress=show_progress, **protocol)
    # the attacker's own crops: some make its shadow updates, others its reference (mean softmax, mean
    # gradient), so shadow candidates are never part of the reference, just as target candidates are not
    norm = normalisation(model)  # the clients' images, and the attacker's, as the model was trained
    public = crop_pool(dataset, simulation_idx, size, crops_per_image, seed + 1, **norm)
    reference = crop_pool(dataset, reference_idx, size, crops_per_image, seed + 3, **norm)
    private = crop_pool(dataset, target_idx, size, crops_per_image, seed + 2, **norm)
    if spec is not None and spec.threshold is None:
        spec = spec.at_median(reference, batch_size, seed)
        common["prop"] = spec
    # Updates are streamed: each is featurised as soon as it is made and dropped (see the module docstring).
    # Shadow first (the attacker fits before it sees a target); each stream draws from its own seeded
    # generator, so the order of the two streams does not change any update.
    attacker_model = copy.deepcopy(model)
    inference = attacker(spec)
    shadow_x, shadow_truths = [], []
    for case, truth in stream(model, public, shadow_updates or updates, batch_size, seed=seed + 20_000,
                              desc="shadow updates", **common):
        if not shadow_x:
            inference.prepare(attacker_model, reference, case)
        shadow_x.append(inference.features(attacker_model, case))
        shadow_truths.append(truth)
        del case
    inference.fit_features(np.stack(shadow_x), shadow_truths)
    predictions, truths, meta = [], [], None
    for case, truth in stream(model, private, updates, batch_size, seed=seed + 10_000, desc="target updates",
                              **common):
        if meta is None:
            meta = case.update.meta  # the protocol and defense, for the result (not the tensors)
        predictions.append(inference.predict_features(inference.features(attacker_model, case)))
        truths.append(truth)
        del case

    result = InferenceResult(attack, batch_size, updates, spec.text if spec else None,
                             meta.defense or {"name": "none"},
                             {"size": size, "shadow_updates": len(shadow_truths), "seed": seed,
                              "data_split": "images" if len(dataset) >= SPLIT_BY_IMAGE else "crops",
                              **{k: v for k, v in protocol.items()}})
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
    result.runtime_s = time.perf_counter() - start
    return result
