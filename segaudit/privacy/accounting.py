"""Privacy accounting with Opacus's RDP and PRV accountants: epsilon for a noise level, and back.

Example:
    >>> epsilon(1.5, 0.04, 2250, 1e-5)                       # RDP, ~7.33
    >>> sigma = noise_for_epsilon(8.0, 0.04, 2250, 1e-5)
"""
from __future__ import annotations

import math
from typing import Literal

from ..errors import SegauditError
from ..models.dp_compatible import quiet_opacus

ACCOUNTANTS = ("rdp", "prv")


def _check_accounting(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise SegauditError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
        raise SegauditError(f"sample rate must be in (0, 1] (batch size / dataset size), got {sample_rate}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SegauditError(f"steps must be a positive integer, got {steps!r}")
    check_delta(delta)


def check_delta(delta: float) -> None:
    """Refuse a delta outside (0, 1)."""
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise SegauditError(f"delta must be in (0, 1), e.g. 1e-5 (below 1/dataset size), got {delta}")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float = 1e-5,
            accountant: Literal["rdp", "prv"] = "rdp") -> float:
    """The epsilon Opacus's accountant gives ``steps`` DP-SGD steps with Poisson sampling.

    Args:
        noise_multiplier: sigma, the noise standard deviation over the clipping norm (> 0).
        sample_rate: q, the probability that a sample is in a step's batch (batch size / dataset size).
        steps: T, the number of noisy steps.
        delta: the delta of the (epsilon, delta) guarantee, in (0, 1).
        accountant: ``"rdp"`` (Rényi DP, Mironov 2017) or ``"prv"`` (privacy random variables,
            Gopi et al. 2021; tighter).

    Returns:
        epsilon (``inf`` when ``noise_multiplier`` is 0).

    Example:
        >>> round(epsilon(1.5, 0.04, 2250, 1e-5), 4)
        7.3291
    """
    _check_accounting(sample_rate, steps, delta, accountant)
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise SegauditError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    ctx = quiet_opacus()
    try:
        return float(acc.get_epsilon(delta))
    finally:
        ctx.__exit__(None, None, None)


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float = 1e-5,
                      accountant: Literal["rdp", "prv"] = "rdp", tolerance: float = 0.01) -> float:
    """The smallest sigma (to ``tolerance`` in epsilon) whose ``steps`` steps spend at most ``target_epsilon``.

    Opacus's ``get_noise_multiplier`` binary search with the same accountant as :func:`epsilon`.

    Raises:
        SegauditError: ``target_epsilon`` <= 0 or not finite, or bad rate/steps/delta/accountant.
    """
    check_epsilon(target_epsilon)
    _check_accounting(sample_rate, steps, delta, accountant)
    from opacus.accountants.utils import get_noise_multiplier

    ctx = quiet_opacus()
    try:
        return float(get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta),
                                          sample_rate=float(sample_rate), steps=int(steps),
                                          accountant=accountant, epsilon_tolerance=tolerance))
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise SegauditError(f"epsilon {target_epsilon} cannot be reached with q={sample_rate}, {steps} steps, "
                            f"delta={delta}: raise the epsilon or lower the steps or sample rate ({e})") from None
    finally:
        ctx.__exit__(None, None, None)


def check_epsilon(target_epsilon: float) -> None:
    """Refuse a target epsilon that is not a finite number > 0."""
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon and math.isfinite(target_epsilon)):
        raise SegauditError(f"target epsilon must be a finite number > 0, got {target_epsilon}")


def check_sample_rate(sample_rate: float, batch_size: int, dataset_size: int) -> None:
    """Refuse a sampler whose rate is not ``batch_size / dataset_size`` (the accounting would be wrong)."""
    if not 0.0 < sample_rate <= 1.0:
        raise SegauditError(f"sample rate must be in (0, 1], got {sample_rate}")
    expected = batch_size / dataset_size
    if not math.isclose(sample_rate, expected, rel_tol=1e-6):
        divisors = [d for d in range(1, dataset_size + 1) if dataset_size % d == 0]
        raise SegauditError(
            f"the sampler's rate {sample_rate:.4g} disagrees with batch size {batch_size} / {dataset_size} samples "
            f"= {expected:.4g}; Opacus samples at 1/ceil(N/B), so use a batch size that divides {dataset_size} "
            f"({', '.join(map(str, divisors))})")
