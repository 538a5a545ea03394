"""The privacy-utility trade-off: for every defense, how well the model still learns and what an attacker
who knows the defense still rebuilds from one client's update.

For each defense spec (see :func:`segaudit.defenses.parse_defense`):

* **utility** — a copy of the global model is trained by simulated federated training: every step one
  client computes its update on a random augmented crop batch of the training split *through the defense*
  (``defense.client_update``), and the server applies it with Adam (FedAdam: the shared gradient, or
  ``-delta / lr`` for FedAvg deltas, is the pseudo-gradient) on a cosine schedule, adopting the client's
  BatchNorm statistics; then held-out Dice/IoU (:func:`segaudit.train.evaluate`). For ``dp`` (Opacus
  DP-SGD, when :mod:`segaudit.privacy` provides it) the model is trained with
  :func:`segaudit.privacy.train_private` instead, which also gives epsilon.
* **leakage** — one client update of a held-out batch from the *global* model (the same model for every
  defense, so only the defense differs), attacked by the adaptive attacker: ``seg`` reading
  ``meta.defense`` (:mod:`segaudit.attacks.adaptive`), or the ``dropout`` attack for a dropout defense;
  scored against the batch (PSNR, SSIM, mask Dice).

Example:
    >>> rows = run_tradeoff(model, load_dataset("nuclei"), ["none", "prune:0.9"], TradeoffSettings(train_steps=50))
    >>> rows[1]["attack_psnr"], rows[1]["utility_dice"]
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .attacks import ATTACKS
from .attacks.knowledge import attacker_data
from .data import Dataset, make_batch, split
from .defenses import DEFENSES, Defense, parse_defense
from .errors import NotApplicable, SegauditError
from .fl import trainable_params
from .metrics import eval_crop_size, identification, pooled_identification, score
from .preprocessing import normalisation
from .privacy import DPSpec, make_private_model, train_private
from .progress import progress as _progress
from .train import evaluate
from .types import CLIENT_MODE, ClientProtocol, Prior


@dataclass(frozen=True)
class TradeoffSettings:
    """The sweep's budget and protocol (the same for every defense).

    Attributes:
        size: crop size in pixels (training and attacked batch).
        batch_size: images in the attacked client's batch.
        train_steps, train_batch_size, lr: simulated federated training (server Adam learning rate).
        attack_steps, restarts: the inversion budget per defense.
        client_mode: ``"train"`` (the default, as real clients train: BatchNorm on batch statistics) or
            ``"eval"`` (running statistics, the easier case for the attacker).
        images: attacked client batches per defense (the leakage columns are their means).
        loss: the clients' loss (``"ce"``; DP-SGD needs per-sample losses).
        holdout: held-out share of the dataset (utility and the attacked batch come from it).
        seed: seeds the split, the crops, the defenses' randomness and the attack.
        delta: the delta of DP guarantees.
    """

    size: int = 64
    batch_size: int = 1
    train_steps: int = 300
    train_batch_size: int = 4
    lr: float = 1e-3
    attack_steps: int = 200
    restarts: int = 1
    client_mode: str = CLIENT_MODE
    images: int = 3
    loss: str = "ce"
    holdout: float = 0.25
    seed: int = 0
    delta: float = 1e-5

    def __post_init__(self):
        for key in ("size", "batch_size", "train_steps", "train_batch_size", "attack_steps", "restarts", "images"):
            if getattr(self, key) < 1:
                raise SegauditError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise SegauditError(f"learning rate must be > 0, got {self.lr}")
        self.protocol()  # checks the client mode

    def protocol(self, client_mode: str | None = None) -> ClientProtocol:
        """The clients' protocol: FedSGD with this loss, in ``client_mode`` (default: the settings')."""
        return ClientProtocol(loss=self.loss, client_mode=client_mode or self.client_mode)


def parse_defense_list(text: str) -> list[tuple[str, Defense]]:
    """``"none,noise:0.01,dp:eps=8/clip=1"`` -> ``[(spec, Defense), ...]``, every spec validated first.

    Raises:
        SegauditError: an empty list, a spec listed twice, or any bad spec (see :func:`parse_defense`).
    """
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise SegauditError("--defenses is empty; give comma-separated specs such as none,noise:0.01,prune:0.9")
    seen = set()
    for s in specs:
        if s in seen:
            raise SegauditError(f"defense {s!r} is listed twice in --defenses")
        seen.add(s)
    return [(s, parse_defense(s)) for s in specs]


def is_dp(defense: Defense) -> bool:
    """Whether ``defense`` is the Opacus DP-SGD defense (trained and accounted by :mod:`segaudit.privacy`)."""
    return defense.name == "dp"


def train_defended(model: nn.Module, dataset: Dataset, defense: Defense, settings: TradeoffSettings,
                   progress: bool = False) -> dict:
    """Simulated federated training of a copy of ``model`` with every client update made through ``defense``.

    Each step: ``train_batch_size`` random training images (augmented crops, the same draws as
    :func:`segaudit.train.train_model` with this seed) -> ``defense.client_update`` (train mode, seed = step)
    -> the server's Adam step on the shared gradient (or ``-delta / lr`` for a FedAvg delta), cosine learning
    rate; the client's BatchNorm buffers are adopted.

    Returns:
        ``{"dice", "iou", "seconds", "epsilon": None, "final_loss"}`` on the held-out split.
    """
    train_idx, test_idx = split(dataset, holdout=settings.holdout, seed=settings.seed)
    rng = np.random.default_rng(settings.seed)
    global_model = copy.deepcopy(model).train()
    params = trainable_params(global_model)
    opt = torch.optim.Adam(list(params.values()), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.train_steps)
    buffers = dict(global_model.named_buffers())
    start = time.perf_counter()
    for step in _progress(range(settings.train_steps), f"train {defense.name}", enabled=progress):
        idx = rng.choice(train_idx, size=settings.train_batch_size,
                         replace=len(train_idx) < settings.train_batch_size).tolist()
        batch = make_batch(dataset, idx, size=settings.size, augment=True, seed=settings.seed * 1_000_003 + step,
                           fit="crop", **normalisation(model))
        update = defense.client_update(global_model, batch, settings.protocol("train"),
                                       seed=settings.seed * 1_000_003 + step)
        scale = 1.0 if update.meta.mode == "fedsgd" else -1.0 / update.meta.lr
        for name, p in params.items():
            p.grad = update.tensors[name].to(p.dtype) * scale
        opt.step()
        sched.step()
        with torch.no_grad():
            for name, value in update.buffers.items():
                if name in buffers:
                    buffers[name].copy_(value)
    seconds = time.perf_counter() - start
    quality = evaluate(global_model, dataset, test_idx, eval_crop_size(dataset))
    return {"dice": quality["dice"], "iou": quality["iou"], "seconds": seconds, "epsilon": None}


def train_dp(model: nn.Module, dataset: Dataset, defense: Defense, settings: TradeoffSettings,
             progress: bool = False) -> dict:
    """Utility and epsilon of DP-SGD training (:func:`segaudit.privacy.train_private`) for a ``dp`` defense.

    The defense's ``eps`` (or ``sigma``), ``clip``, ``delta`` and accountant make the :class:`DPSpec`; the
    epsilon is what Opacus's accountant gives the whole training run (``train_steps`` steps, sample rate
    ``train_batch_size / training images``).

    Returns:
        ``{"dice", "iou", "seconds", "epsilon", "noise_multiplier", "max_grad_norm", "sample_rate", "steps"}``.
    """
    spec = DPSpec(noise_multiplier=defense.sigma, target_epsilon=None if defense.sigma is not None else defense.eps,
                  delta=min(defense.delta, settings.delta), max_grad_norm=defense.clip, accountant=defense.accountant)
    start = time.perf_counter()
    result = train_private(copy.deepcopy(model).train(), dataset, spec, size=settings.size,
                           steps=settings.train_steps, batch_size=settings.train_batch_size, lr=settings.lr,
                           loss="ce", holdout=settings.holdout, seed=settings.seed, eval_size=eval_crop_size(dataset),
                           progress=progress)
    return {"dice": result.dice, "iou": result.iou, "seconds": time.perf_counter() - start,
            "epsilon": result.epsilon, "noise_multiplier": result.noise_multiplier,
            "max_grad_norm": result.max_grad_norm, "sample_rate": result.sample_rate, "steps": result.steps}


def dp_client(model: nn.Module, defense: Defense, utility: dict) -> tuple[nn.Module, Defense]:
    """The attacked DP client: the DP-compatible (GroupNorm) copy of ``model`` and the ``dp`` defense with the
    noise multiplier, sample rate and steps of the DP training, so one attacked update is one of its steps."""
    private, _ = make_private_model(copy.deepcopy(model))
    step = dataclasses.replace(defense, eps=None, sigma=utility["noise_multiplier"], q=utility["sample_rate"],
                               rounds=utility["steps"], dataset=0)
    return private, step


def attack_defended(model: nn.Module, dataset: Dataset, defense: Defense, settings: TradeoffSettings,
                    attack: str | None = None, progress: bool = False, **attack_options) -> dict:
    """Attack ``settings.images`` held-out client updates made through ``defense``; the attacker knows the defense.

    Args:
        attack: ``None`` picks the adaptive attacker (``"dropout"`` for a dropout defense, else ``"seg"``).
        **attack_options: more options of the attack (e.g. ``known_masks=True``, ``adaptive=False``).

    Returns:
        The means over the attacked batches of ``{"attack_psnr", "attack_ssim", "attack_mse", "attack_mask_dice",
        "attack_mask_iou", "attack_baseline_psnr", "attack_baseline_mask_dice", "attack_psnr_gain",
        "attack_mask_dice_gain"}`` (baselines and gains: :func:`segaudit.metrics.score`), with ``"attack"``,
        ``"attack_images"`` (n), ``"attack_status"``, ``"attack_seconds"``, ``"adaptation"`` and
        ``"attack_identification"``/``"attack_mask_identification"`` (images picked out of the attacker's
        public crops: :func:`segaudit.metrics.pooled_identification`; baselines and distractors come from
        :func:`segaudit.attacks.knowledge.attacker_data`, the data's other images). A setting no
        client can run (:class:`~segaudit.errors.NotApplicable`) gives null metrics and its reason as the status.
    """
    _, test_idx = split(dataset, holdout=settings.holdout, seed=settings.seed)
    attack = attack or ("dropout" if defense.name == "dropout" else "seg")
    # Opacus records activations only in train mode; the DP model has GroupNorm, which ignores the mode
    protocol = settings.protocol("train" if is_dp(defense) else None)
    scores, found, statuses, seconds, adaptation = [], [], [], 0.0, None
    for image in range(settings.images):
        idx = [test_idx[(image * settings.batch_size + i) % len(test_idx)] for i in range(settings.batch_size)]
        batch = make_batch(dataset, idx, size=settings.size, fit="crop", seed=settings.seed + image,
                           **normalisation(model))
        knowledge = attacker_data(dataset, batch, settings.size, fit="crop", norm=normalisation(model),
                                  seed=settings.seed + image)
        try:
            update = defense.client_update(model, batch, protocol, seed=settings.seed + image)
        except NotApplicable as e:
            return {"attack": attack, "attack_images": 0, "attack_status": f"{NotApplicable.STATUS}: {e}",
                    "attack_seconds": 0.0, "adaptation": None, **{f"attack_{k}": None for k in _LEAKAGE},
                    "attack_identification": None, "attack_mask_identification": None}
        attacker = ATTACKS.create(attack, steps=settings.attack_steps, restarts=settings.restarts,
                                  seed=settings.seed + image, show_progress=progress, **attack_options)
        start = time.perf_counter()
        rec = attacker.run(model, update, Prior.from_batch_shape(batch))
        seconds += time.perf_counter() - start
        scores.append(score(rec, batch, **(knowledge.score_kwargs() if knowledge else {})))
        found.append(identification(rec, batch, knowledge.public if knowledge else None))
        statuses.append(rec.status)
        adaptation = adaptation or rec.extras.get("adaptation")
    pooled = pooled_identification(found)
    return {"attack": attack, "attack_images": len(scores), "attack_status": ", ".join(sorted(set(statuses))),
            "attack_seconds": seconds, "adaptation": adaptation,
            **{f"attack_{k}": _mean([m[k] for m in scores]) for k in _LEAKAGE},
            "attack_identification": pooled["identification"],
            "attack_mask_identification": pooled["mask_identification"]}


_LEAKAGE = ("psnr", "ssim", "mse", "mask_dice", "mask_iou", "baseline_psnr", "baseline_mask_dice", "psnr_gain",
            "mask_dice_gain")


def _mean(values: list) -> float | None:
    """The mean of the values that are set (a perfect reconstruction's infinite PSNR keeps it infinite)."""
    values = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def run_tradeoff(model: nn.Module, dataset: Dataset, defenses: list[str] | list[tuple[str, Defense]],
                 settings: TradeoffSettings = TradeoffSettings(), progress: bool = False,
                 on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per defense: utility of the defended training, leakage to the adaptive attacker, epsilon.

    Args:
        model: the global model (trained or fresh); attacked as it is, and the start of every training.
        dataset: from :func:`segaudit.data.load_dataset`.
        defenses: specs (``"prune:0.9"``) or ``(spec, Defense)`` pairs.
        on_row: called with each finished row (e.g. to print it).

    Returns:
        Rows ``{"defense", "name", "params", "epsilon", "utility_dice", "utility_iou", "attack",
        "attack_psnr", "attack_ssim", "attack_mask_dice", ..., "runtime_s"}`` in the order given.
    """
    pairs = [(d, parse_defense(d)) if isinstance(d, str) else d for d in defenses]
    rows = []
    for spec, defense in pairs:
        start = time.perf_counter()
        if is_dp(defense):
            utility = train_dp(model, dataset, defense, settings, progress)
            private_model, step_defense = dp_client(model, defense, utility)
            leak = attack_defended(private_model, dataset, step_defense, settings, progress=progress)
        else:
            utility = train_defended(model, dataset, defense, settings, progress)
            leak = attack_defended(model, dataset, defense, settings, progress=progress)
        row = {"defense": spec, "name": defense.name, "params": defense.params(), "epsilon": utility["epsilon"],
               "utility_dice": utility["dice"], "utility_iou": utility["iou"], **leak,
               "train_seconds": utility["seconds"], "runtime_s": time.perf_counter() - start,
               **{k: utility[k] for k in ("noise_multiplier", "max_grad_norm", "sample_rate") if k in utility}}
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def default_defenses() -> str:
    """The sweep's default list: each gradient defense once, plus DP at epsilon 1 and 8 when available."""
    base = "none,noise:0.001,clip:1,prune:0.9,quant:2,dropout:0.5"
    return base + (",dp:eps=1,dp:eps=8" if "dp" in DEFENSES else "")


def settings_dict(settings: TradeoffSettings) -> dict:
    return asdict(settings)
