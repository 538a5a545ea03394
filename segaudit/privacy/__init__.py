"""Differential privacy with Opacus: DP-SGD training, DP client updates and privacy accounting.

Everything DP here is Opacus's own machinery: ``ModuleValidator.fix`` (BatchNorm -> GroupNorm),
``GradSampleModule`` per-sample gradients, ``DPOptimizer`` clipping and noise, ``PrivacyEngine`` with
Poisson sampling, and the RDP / PRV accountants. segaudit adds validation with one-line errors, the
in-place fixes smp models need, and the bookkeeping (epsilon, delta, sigma, C, q, steps) in results.

Modules: :mod:`~.accounting` (epsilon, sigma for an epsilon, sample-rate check), :mod:`~.model_fix` (what Opacus
needs of a model; the fix itself is :mod:`segaudit.models.dp_compatible`, re-exported here), :mod:`~.client`
(DP-SGD client updates) and :mod:`~.training` (DP-SGD training).

Example:
    >>> epsilon(1.5, 0.04, 2250, 1e-5)                       # RDP, ~7.33
    >>> sigma = noise_for_epsilon(8.0, 0.04, 2250, 1e-5)
    >>> result = train_private(model, load_dataset("nuclei"), DPSpec(target_epsilon=8), epochs=20, batch_size=3)
"""
from __future__ import annotations

from ..models.dp_compatible import make_private_model
from .accounting import ACCOUNTANTS, check_sample_rate, epsilon, noise_for_epsilon
from .client import private_client_update
from .model_fix import FIX_HINT, GRAD_SAMPLE_MODES, check_private_model
from .training import DPSpec, PrivateTrainResult, train_private

__all__ = [
    "ACCOUNTANTS",
    "DPSpec",
    "FIX_HINT",
    "GRAD_SAMPLE_MODES",
    "PrivateTrainResult",
    "check_private_model",
    "check_sample_rate",
    "epsilon",
    "make_private_model",
    "noise_for_epsilon",
    "private_client_update",
    "train_private",
]
