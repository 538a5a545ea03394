"""The findings of an audit, now :mod:`segaudit.findings` (one level down, so the results builder can read them);
this path keeps working."""
from ..findings import (
    AUC,
    DP_EPSILON,
    IDENTIFIED,
    LEVELS,
    MASK_DICE_GAIN,
    NOT_APPLICABLE,
    PSNR_GAIN_DB,
    RULE,
    SSIM_GAIN,
    UNDEFENDED,
    failed_runs,
    honest_cells,
    honest_runs,
    inapplicable_runs,
    malicious,
    not_tried,
    num,
    recommendations,
    risk,
    stops_attack,
    worst_case,
)

__all__ = ["AUC", "DP_EPSILON", "IDENTIFIED", "LEVELS", "MASK_DICE_GAIN", "NOT_APPLICABLE", "PSNR_GAIN_DB", "RULE",
           "SSIM_GAIN", "UNDEFENDED", "failed_runs", "honest_cells", "honest_runs", "inapplicable_runs", "malicious",
           "not_tried", "num", "recommendations", "risk", "stops_attack", "worst_case"]
