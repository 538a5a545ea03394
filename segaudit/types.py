"""Typed payloads passed between the steps of an audit.

Shapes: N images per batch, C channels, H x W pixels, K classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import SegauditError

FL_MODES = ("fedsgd", "fedavg")
"""FedSGD shares one gradient; FedAvg runs local steps and shares the weight delta."""
CLIENT_MODES = ("train", "eval")
"""The client model's mode while it computes its update."""
CLIENT_MODE = "train"
"""The default mode of every simulated client (every command, the config and the Python API). Real clients
train in train mode, BatchNorm normalising by the batch's own statistics; eval mode (running statistics) is
the easier case for the attacker and is opt-in (``--client-mode eval``, ``client_mode: eval``)."""

Task = Literal["segmentation", "classification"]
FLMode = Literal["fedsgd", "fedavg"]
ClientMode = Literal["train", "eval"]


@dataclass(frozen=True)
class ClientProtocol:
    """How a simulated federated client computes what it shares.

    Attributes:
        mode: ``"fedsgd"`` (one gradient) or ``"fedavg"`` (the weight delta after ``local_steps`` SGD steps).
        loss, reduction: see :func:`segaudit.losses.task_loss`.
        local_steps, lr, local_batch_size: FedAvg's local SGD (``None``: the whole batch each step); FedSGD
            ignores them.
        client_mode: ``"train"`` (BatchNorm on the batch's statistics, as real clients train) or ``"eval"``.
        share_buffers: whether the update carries the buffers (BatchNorm running statistics) after the client's
            computation.

    Raises:
        SegauditError: an unknown mode, client mode or reduction, ``local_steps < 1`` or a non-positive FedAvg
            learning rate (the loss and the local batch size are checked with the batch, by
            :func:`segaudit.fl.client_meta`).
    """

    mode: FLMode = "fedsgd"
    loss: str = "ce"
    reduction: Literal["mean", "sum"] = "mean"
    local_steps: int = 1
    lr: float = 0.01
    local_batch_size: int | None = None
    client_mode: ClientMode = CLIENT_MODE
    share_buffers: bool = True

    def __post_init__(self):
        if self.mode not in FL_MODES:
            raise SegauditError(f"unknown mode {self.mode!r}; use 'fedsgd' or 'fedavg'")
        if self.client_mode not in CLIENT_MODES:
            raise SegauditError(f"client mode must be 'train' or 'eval', got {self.client_mode!r}")
        if self.reduction not in ("mean", "sum"):
            raise SegauditError(f"unknown reduction {self.reduction!r}; use 'mean' or 'sum'")
        if self.local_steps < 1:
            raise SegauditError(f"local_steps must be at least 1, got {self.local_steps}")
        if self.mode == "fedavg" and not self.lr > 0:
            raise SegauditError(f"FedAvg needs a positive learning rate, got lr={self.lr}")

    @classmethod
    def of(cls, protocol: ClientProtocol | None = None, *, train_mode: bool | None = None,
           **changes) -> ClientProtocol:
        """``protocol`` (default: the default protocol) with ``changes``, field by field; ``train_mode`` is the
        Python API's boolean spelling of ``client_mode``.

        Example:
            >>> ClientProtocol.of(mode="fedavg", local_steps=4, train_mode=False).client_mode
            'eval'
        """
        if train_mode is not None:
            changes["client_mode"] = "train" if train_mode else "eval"
        return dataclasses.replace(protocol or cls(), **changes)

    @classmethod
    def extract(cls, protocol: ClientProtocol | None, options: dict[str, Any]) -> tuple[ClientProtocol, dict]:
        """``protocol`` changed by the protocol's names among ``options`` (as :meth:`of`), and the other options.

        Example:
            >>> ClientProtocol.extract(None, {"mode": "fedavg", "steps": 50})
            (ClientProtocol(mode='fedavg', ...), {'steps': 50})
        """
        names = {f.name for f in dataclasses.fields(cls)} | {"train_mode"}
        changes = {k: v for k, v in options.items() if k in names}
        return cls.of(protocol, **changes), {k: v for k, v in options.items() if k not in names}

    def record(self) -> dict[str, Any]:
        """What results record of the protocol: ``mode``, ``local_steps``, ``lr``, ``loss``, ``train_mode``."""
        return {"mode": self.mode, "local_steps": self.local_steps, "lr": self.lr, "loss": self.loss,
                "train_mode": self.train_mode}

    @property
    def train_mode(self) -> bool:
        """Whether the client's model runs in train mode (BatchNorm on the batch's statistics)."""
        return self.client_mode == "train"


@dataclass(frozen=True)
class Batch:
    """A client's private batch.

    Attributes:
        images: ``[N, C, H, W]`` float, already normalised for the model.
        masks: ``[N, H, W]`` long in ``0..K-1`` (segmentation) or ``[N]`` labels (classification).
        class_names: K names (untrusted text: escape before rendering).
        names: N sample identifiers (e.g. file stems), for reports only.
        mean, std: per-channel normalisation applied to ``images`` (to map back to [0, 1]).
    """

    images: torch.Tensor
    masks: torch.Tensor
    class_names: tuple[str, ...]
    names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def task(self) -> Task:
        return "segmentation" if self.masks.dim() == 3 else "classification"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index) -> Batch:
        """The batch restricted to ``index`` (a list of positions or a slice)."""
        idx = torch.as_tensor(index) if not isinstance(index, slice) else index
        names = tuple(self.names[i] for i in torch.arange(len(self))[idx].tolist()) if self.names else ()
        return Batch(self.images[idx], self.masks[idx], self.class_names, names, self.mean, self.std)


@dataclass(frozen=True)
class UpdateMeta:
    """What the server knows about how a client produced its update.

    Attributes:
        mode: ``"fedsgd"`` (one gradient) or ``"fedavg"`` (weight delta after ``local_steps`` SGD steps).
        batch_size: N, the number of samples behind the update.
        loss: loss name (``"ce"``, ``"dice_ce"``); the attacker must use the same one.
        reduction: ``"mean"`` over pixels and samples, or ``"sum"``.
        lr, local_steps, local_batch_size: FedAvg optimiser settings (``lr`` is 0 for FedSGD).
        train_mode: whether the model ran in train mode (BatchNorm uses batch statistics then).
        defense: name and parameters of the defense applied, for an adaptive attacker.
    """

    mode: FLMode
    batch_size: int
    loss: str = "ce"
    reduction: Literal["mean", "sum"] = "mean"
    lr: float = 0.0
    local_steps: int = 1
    local_batch_size: int | None = None
    train_mode: bool = True
    defense: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientUpdate:
    """What a federated client shares with the server.

    Attributes:
        tensors: parameter name -> gradient (FedSGD) or weight delta ``w_after - w_before`` (FedAvg),
            each with the parameter's shape.
        buffers: buffer name -> value after the client's computation (e.g. BatchNorm running stats),
            empty when the client does not share them.
        meta: how the update was made.
    """

    tensors: dict[str, torch.Tensor]
    meta: UpdateMeta
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> Literal["gradients", "delta"]:
        return "gradients" if self.meta.mode == "fedsgd" else "delta"

    def norm(self) -> float:
        """Global L2 norm over all tensors."""
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in self.tensors.values())))


@dataclass(frozen=True)
class Prior:
    """Everything an attacker is assumed to know besides the model and the update.

    Attributes:
        image_shape: ``(C, H, W)``.
        batch_size: N (known to the server in FedSGD/FedAvg protocols).
        num_classes: K.
        task: segmentation or classification.
        mean, std: the normalisation of the client's images (per channel).
        bn_stats: optional layer name -> (mean, var) of BatchNorm inputs, when shared.
        public_images: ``[M,C,H,W]`` normalised images of the same kind that the attacker holds (a public
            dataset, never the client's); used to estimate the client's mean softmax.
    """

    image_shape: tuple[int, int, int]
    batch_size: int
    num_classes: int
    task: Task = "segmentation"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    public_images: torch.Tensor | None = None

    @classmethod
    def from_batch_shape(cls, batch: Batch, **kw) -> Prior:
        """The public facts about ``batch`` (shape, classes, normalisation) — never its content."""
        c, h, w = batch.images.shape[1:]
        return cls((int(c), int(h), int(w)), len(batch), batch.num_classes, batch.task,
                   batch.mean or (0.5,) * c, batch.std or (0.5,) * c, **kw)


@dataclass
class Reconstruction:
    """An attack's output.

    Attributes:
        images: ``[N, C, H, W]`` in the model's normalised space (``None`` when no restart succeeded).
        masks: ``[N, H, W]`` long (segmentation), or ``None``.
        labels: ``[N]`` long (classification), or ``None``.
        restart_losses: final matching loss per restart (``nan`` for abandoned restarts).
        restart_status: ``"ok"`` or the reason a restart was abandoned.
        history: matching loss per step of the chosen restart.
        status: ``"ok"`` or ``"no valid reconstruction"``.
        extras: attack-specific outputs (e.g. recovered class composition ``[K]``).
    """

    images: torch.Tensor | None
    masks: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    restart_losses: list[float] = field(default_factory=list)
    restart_status: list[str] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    status: str = "ok"
    extras: dict[str, Any] = field(default_factory=dict)
