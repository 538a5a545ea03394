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

Modules: :mod:`.cases` (the property asked, what the attacker sees, the truth), :mod:`.simulation` (crop
pools, the stream of client updates), :mod:`.attacks` (the attacks and their registry :data:`INFERENCE`),
:mod:`.scoring` (AUC, TPR at 1 % FPR, intervals), :mod:`.experiment` (:func:`run_inference`).
"""
from .attacks import (
    INFERENCE,
    REFERENCE_CHUNK,
    CompositionAttack,
    InferenceAttack,
    MembershipAttack,
    PropertyAttack,
    update_as_gradient,
    update_features,
)
from .cases import Case, PropertySpec, Truth
from .experiment import SPLIT_BY_IMAGE, InferenceResult, run_inference
from .scoring import MIN_NEGATIVES_AT_1PCT, bootstrap_auc, mean_ci, roc_scores
from .simulation import crop_pool, simulate, stream

__all__ = [
    "INFERENCE", "MIN_NEGATIVES_AT_1PCT", "REFERENCE_CHUNK", "SPLIT_BY_IMAGE", "Case", "CompositionAttack",
    "InferenceAttack", "InferenceResult", "MembershipAttack", "PropertyAttack", "PropertySpec", "Truth",
    "bootstrap_auc", "crop_pool", "mean_ci", "roc_scores", "run_inference", "simulate", "stream",
    "update_as_gradient", "update_features",
]
