"""One attack experiment: simulate a client's update on a batch, attack it, score the result."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import nn

from ..fl import client_update
from ..metrics import identification, score
from ..types import Batch, ClientProtocol, ClientUpdate, Prior, Reconstruction
from .base import ATTACKS  # filled by the package's __init__, which Python runs before this module
from .knowledge import AttackerData


@dataclass
class AttackOutcome:
    """An attack's reconstruction, its scores against the truth and the baselines, whether it re-identifies the
    client's images (:func:`segaudit.metrics.identification`; empty without distractors), and how it was obtained."""

    reconstruction: Reconstruction
    metrics: dict[str, float | None]
    update: ClientUpdate
    runtime_s: float
    settings: dict = field(default_factory=dict)
    identification: dict = field(default_factory=dict)


def attack_batch(model: nn.Module, batch: Batch, attack: str = "seg", protocol: ClientProtocol | None = None, *,
                 knowledge: AttackerData | None = None, **options) -> AttackOutcome:
    """Simulate the client's update on ``batch``, run ``attack`` on it (no access to the batch), score it.

    Args:
        model: the global model the client starts from.
        batch: the client's private batch (used for the update and, afterwards, for scoring only).
        attack: a name in :data:`~segaudit.attacks.ATTACKS` (``"dlg"``, ``"ig"``, ``"seg"``).
        protocol: the client's protocol (default: FedSGD in train mode; see :func:`segaudit.fl.client_update`).
        knowledge: images and masks the attacker holds (not the client's): the baselines' prior image and public
            masks, the distractors for re-identification (see :mod:`segaudit.attacks.knowledge`), and what a
            malicious attacker tunes the model it sends to (:meth:`~segaudit.attacks.base.Attack.send`).
        **options: the attack's options (e.g. ``steps``, ``restarts``, ``seed``, ``show_progress``), and changes
            to ``protocol`` by the names of :class:`~segaudit.types.ClientProtocol` (``mode``, ``local_steps``,
            ``lr``, ``loss``, ``train_mode``, ...).

    Example:
        >>> outcome = attack_batch(build_model("unet", in_channels=1), batch, "seg", steps=500)
        >>> outcome.metrics["psnr"], outcome.metrics["mask_dice"]
    """
    protocol, attack_options = ClientProtocol.extract(protocol, options)
    attacker = ATTACKS.create(attack, **attack_options)
    prior = Prior.from_batch_shape(batch)
    sent = attacker.send(model, prior, knowledge.public.images if knowledge is not None else None)
    update = client_update(sent, batch, protocol)
    start = time.perf_counter()
    rec = attacker.run(sent, update, prior)
    runtime = time.perf_counter() - start
    settings = {"attack": attack, "threat": attacker.threat, **protocol.record(),
                **{k: getattr(attacker, k) for k in ("steps", "restarts", "seed", "objective") if hasattr(attacker, k)}}
    extra = knowledge.score_kwargs() if knowledge is not None else {}
    found = identification(rec, batch, knowledge.public if knowledge is not None else None)
    return AttackOutcome(rec, score(rec, batch, **extra), update, runtime, settings, found)
