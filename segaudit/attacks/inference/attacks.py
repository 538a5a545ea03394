"""The inference attacks, fitted on shadow updates and scoring target updates one at a time: ``composition``
(per-class shares from the head bias gradient), ``property`` (shadow-model classifier on update statistics)
and ``membership`` (a known image's centred gradient against the update). They register in :data:`INFERENCE`
in that order."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ...errors import SegauditError
from ...fl import trainable_params
from ...losses import task_loss
from ...registry import Registry
from ...types import Batch, ClientUpdate
from ..recovery import head_bias_name, mean_bias_gradient, mean_softmax
from .cases import Case, PropertySpec, Truth

REFERENCE_CHUNK = 16  # reference images per backward pass when averaging gradients over them (bounds activations)


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
