"""Flower client mods: the leakage gate (:func:`leakage_gate_mod`) and the update capture (:func:`capture_mod`).

A Flower ``ClientApp`` receives the global weights in the train message (one ``ArrayRecord`` keyed by state_dict
name), trains, and replies with its new weights (one ``ArrayRecord``, same keys). From that exchange the mods
rebuild the segaudit :class:`~segaudit.types.ClientUpdate` the client is about to share
(:func:`outgoing_update`): FedAvg deltas ``sent - received`` for every trainable parameter of the model (each
with the parameter's shape, e.g. ``[O, C, k, k]`` for a conv weight) and the sent values of the model's buffers
(BatchNorm running statistics). Only ``train`` messages are looked at; the others pass through untouched.

Keys (fixed names; Flower's Message-API strategies, e.g. ``FedAvg``, put ``"server-round"`` in every train
config themselves):

====================== ================ ==================================================================
key                    record           meaning
====================== ================ ==================================================================
``"lr"``               train config     the client's SGD learning rate (> 0)
``"local-steps"``      train config     local SGD steps (>= 1)
``"batch-size"``       train config     the local mini-batch size (>= 1; capped at ``num-examples``)
``"client-mode"``      train config     optional, ``"train"`` (default) or ``"eval"``: the model's mode while
                                        training (BatchNorm on batch or running statistics)
``"loss"``             train config     optional, ``"ce"`` (default) or ``"dice_ce"``: the training loss
``"server-round"``     train config     optional: the round in file names (else the message's group id if
                                        it is a plain name, else 0)
``"num-examples"``     reply metrics    N, the samples behind the update (default: the config's
                                        ``batch-size``)
``"segaudit-risk"``    reply metrics    added by the gate: the update's risk in [0, 1]
``"segaudit-blocked"`` reply metrics    added by the gate: 0 (a reply that carries metrics was not blocked;
                                        a blocked update is replaced by an error reply)
``"segaudit-above"``   reply metrics    added by the gate: 1 when the risk is above the threshold (what
                                        ``action="flag"`` flags), else 0
====================== ================ ==================================================================

A missing or malformed key, or a reply whose arrays do not match the received ones, makes the mod reply with a
Flower error (``ErrorCode.MOD_FAILED_PRECONDITION``) whose one-line reason names the key.

Order of mods: Flower wraps the first mod of ``ClientApp(mods=[...])`` outermost, so the first one sees the reply
last. ``mods=[leakage_gate_mod(...), capture_mod(...)]`` makes the gate the last to look at what leaves, and
captures every update the client computed, blocked ones included (to attack what would have leaked);
``[capture_mod(...), leakage_gate_mod(...)]`` captures only what left.

Example:
    >>> model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    >>> app = ClientApp(mods=[leakage_gate_mod(model, size=32, log_dir="gate"), capture_mod(model, "updates")])
"""
from __future__ import annotations

import copy
import logging
import numbers
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SegauditError
from ..fl import trainable_params
from ..io import inside, write_json
from ..leakage import DEFAULT_THRESHOLD, gate_update
from ..losses import LOSSES
from ..types import CLIENT_MODE, CLIENT_MODES, ClientUpdate, UpdateMeta
from ..updates import save_update
from .gating import ACTIONS, blocked_reason, check_gate_arguments, require_extra

require_extra("flwr", "flower")  # before flwr is imported: one line instead of an ImportError

from flwr.app import ArrayRecord, Context, Error, Message, MessageType, MetricRecord  # noqa: E402
from flwr.clientapp.typing import ClientAppCallable, Mod  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402

__all__ = ["ACTIONS", "KEY_BATCH_SIZE", "KEY_BLOCKED", "KEY_CLIENT_MODE", "KEY_LOCAL_STEPS", "KEY_LOSS", "KEY_LR",
           "KEY_NUM_EXAMPLES", "KEY_RISK", "KEY_ROUND", "capture_mod", "decision_name", "leakage_gate_mod",
           "outgoing_update", "received_model", "train_settings"]

KEY_LR = "lr"
KEY_LOCAL_STEPS = "local-steps"
KEY_BATCH_SIZE = "batch-size"
KEY_CLIENT_MODE = "client-mode"
KEY_LOSS = "loss"
KEY_ROUND = "server-round"
KEY_NUM_EXAMPLES = "num-examples"
KEY_RISK = "segaudit-risk"
KEY_BLOCKED = "segaudit-blocked"
KEY_ABOVE = "segaudit-above"

GATE = "segaudit leakage gate"
CAPTURE = "segaudit capture"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOG = logging.getLogger(__name__)

Handler = Callable[[Message, Context, Message, ClientUpdate], Message]
"""``(train message, context, reply, rebuilt update) -> the reply to send``."""


def leakage_gate_mod(model: nn.Module, size: int, threshold: float = DEFAULT_THRESHOLD, action: str = "block",
                     log_dir: str | os.PathLike | None = None) -> Mod:
    """A Flower client mod that scores each outgoing train update with :func:`segaudit.leakage.gate_update`.

    The update (:func:`outgoing_update`) is scored on a deep copy of ``model`` holding the received global weights.
    With ``action="block"`` an update whose risk is above ``threshold`` is replaced by an error reply
    (``MOD_FAILED_PRECONDITION``, reason ``"segaudit leakage gate blocked the update: risk 0.77 > 0.50 (riskiest:
    encoder.stem)"``), which Message-API strategies such as ``FedAvg`` leave out of the aggregate. Otherwise (and
    always with ``action="flag"``) the reply goes out with ``"segaudit-risk"``, ``"segaudit-blocked"`` (0) and
    ``"segaudit-above"`` (1 above the threshold) added to its MetricRecord (one named ``"metrics"`` is created if
    it has none).

    Args:
        model: the architecture the ClientApp trains (its weights are not used: the received ones are).
        size: side of the client's (square) images in pixels.
        threshold: risk above which the update is blocked or flagged, in [0, 1].
        action: ``"block"`` or ``"flag"``.
        log_dir: if given, one JSON file per decision, ``round-<R>-node-<node_id>.json`` (see
            :func:`decision_name`): ``{"round", "node", "partition", "batch_size", "risk", "blocked", "threshold",
            "action", "riskiest"}`` (``partition``: the node config's ``partition-id``, ``None`` without one),
            written atomically.

    Raises:
        SegauditError: ``action`` not in :data:`ACTIONS`, ``threshold`` outside [0, 1] or ``size`` < 1.
    """
    check_gate_arguments(size, threshold, action)
    log_dir = None if log_dir is None else Path(log_dir)

    def decide(msg: Message, context: Context, reply: Message, update: ClientUpdate) -> Message:
        result = gate_update(received_model(model, msg), update, threshold=threshold, size=size)
        blocked = action == "block" and result.above
        if log_dir is not None:
            write_json(inside(log_dir, decision_name(msg, context, ".json")), {
                "round": train_settings(msg)["round"], "node": int(context.node_id),
                "partition": context.node_config.get("partition-id"), "batch_size": update.meta.batch_size,
                "risk": result.risk, "blocked": blocked, "threshold": float(threshold), "action": action,
                "riskiest": result.riskiest})
        if blocked:
            return _error(msg, blocked_reason(result))
        metrics = _reply_metrics(reply)
        if metrics is None:
            if "metrics" in reply.content:
                raise SegauditError("the reply has no MetricRecord and its 'metrics' key holds another record")
            metrics = reply.content["metrics"] = MetricRecord()
        metrics[KEY_RISK] = float(result.risk)
        metrics[KEY_BLOCKED] = 0
        metrics[KEY_ABOVE] = int(result.above)
        return reply

    return _train_mod(GATE, model, decide)


def capture_mod(model: nn.Module, out_dir: str | os.PathLike) -> Mod:
    """A Flower client mod that saves each outgoing train update as ``out_dir/round-<R>-node-<node_id>.safetensors``.

    The file is a segaudit update (:func:`segaudit.updates.save_update`; :func:`outgoing_update` rebuilds it), so
    ``segaudit check-update --update FILE`` scores, and ``ATTACKS.create(name).run(model, load_update(FILE),
    prior)`` attacks, what Flower really sent. An existing file of the same name is replaced. The reply goes out
    unchanged.

    Args:
        model: the architecture the ClientApp trains (its parameter and buffer names).
        out_dir: the folder of the update files (created when needed).
    """
    out_dir = Path(out_dir)

    def capture(msg: Message, context: Context, reply: Message, update: ClientUpdate) -> Message:
        save_update(update, inside(out_dir, decision_name(msg, context, ".safetensors")), force=True)
        return reply

    return _train_mod(CAPTURE, model, capture)


def outgoing_update(model: nn.Module, msg: Message, reply: Message) -> ClientUpdate:
    """The FedAvg update a ClientApp's ``reply`` to the train message ``msg`` shares, as segaudit sees it.

    Returns:
        ``ClientUpdate`` with ``tensors[name] = sent[name] - received[name]`` (the parameter's shape and dtype) for
        every trainable parameter of ``model``, ``buffers`` the sent values of ``model``'s buffers the reply holds,
        and ``UpdateMeta(mode="fedavg", batch_size=N, lr, local_steps, local_batch_size=min(batch-size, N),
        train_mode)`` from the train config and the reply's ``"num-examples"`` (see the module's key table).

    Raises:
        SegauditError: a missing or malformed key, not exactly one ArrayRecord in the message or the reply, more
            than one MetricRecord in the reply, reply arrays whose names differ from the received ones, or arrays
            that do not fit ``model``.
    """
    settings = train_settings(msg)
    received = _single(msg.content.array_records, "ArrayRecord", "train message")
    sent = _single(reply.content.array_records, "ArrayRecord", "reply")
    missing, extra = sorted(set(received) - set(sent)), sorted(set(sent) - set(received))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which was not received"
        raise SegauditError(f"the reply's ArrayRecord does not match the received one: it {what}")
    tensors = {}
    for name, p in trainable_params(model).items():
        if name not in received:
            raise SegauditError(f"the received ArrayRecord has no array {name!r} for the model's parameter: "
                                "the weights were made for another model")
        tensors[name] = (_tensor(sent, name, p) - _tensor(received, name, p)).to(p.dtype)
    buffers = {name: _tensor(sent, name, b).to(b.dtype) for name, b in model.named_buffers() if name in sent}
    metrics = _reply_metrics(reply)
    n = settings["batch_size"]
    if metrics is not None and KEY_NUM_EXAMPLES in metrics:
        n = _count(metrics[KEY_NUM_EXAMPLES], KEY_NUM_EXAMPLES, "reply's MetricRecord")
    meta = UpdateMeta("fedavg", n, settings["loss"], lr=settings["lr"], local_steps=settings["local_steps"],
                      local_batch_size=min(settings["batch_size"], n), train_mode=settings["train_mode"])
    return ClientUpdate(tensors, meta, buffers)


def train_settings(msg: Message) -> dict[str, Any]:
    """The checked training settings of a train message's ConfigRecord (see the module's key table).

    Returns:
        ``{"lr": float, "local_steps": int, "batch_size": int, "train_mode": bool, "loss": str, "round": int | str}``.

    Raises:
        SegauditError: not exactly one ConfigRecord, or a key missing or malformed (naming it).
    """
    config = _single(msg.content.config_records, "ConfigRecord", "train message")
    where = "train message's ConfigRecord"
    for key in (KEY_LR, KEY_LOCAL_STEPS, KEY_BATCH_SIZE):
        if key not in config:
            raise SegauditError(f"config key {key!r} is missing from the {where}; the server must send it")
    lr = config[KEY_LR]
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise SegauditError(f"config key {KEY_LR!r} must be a positive number, got {lr!r}")
    mode = config.get(KEY_CLIENT_MODE, CLIENT_MODE)
    if mode not in CLIENT_MODES:
        raise SegauditError(f"config key {KEY_CLIENT_MODE!r} must be 'train' or 'eval', got {mode!r}")
    loss = config.get(KEY_LOSS, "ce")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise SegauditError(f"config key {KEY_LOSS!r} must be one of {', '.join(LOSSES)}, got {loss!r}")
    if KEY_ROUND in config:
        round_ = _count(config[KEY_ROUND], KEY_ROUND, where, minimum=0)
    else:
        group = msg.metadata.group_id or ""
        round_ = int(group) if group.isdigit() else group if _PLAIN_NAME.fullmatch(group) else 0
    return {"lr": float(lr), "local_steps": _count(config[KEY_LOCAL_STEPS], KEY_LOCAL_STEPS, where),
            "batch_size": _count(config[KEY_BATCH_SIZE], KEY_BATCH_SIZE, where), "train_mode": mode == "train",
            "loss": loss, "round": round_}


def received_model(model: nn.Module, msg: Message) -> nn.Module:
    """A deep copy of ``model`` holding the global weights of the train message (its state_dict names).

    Raises:
        SegauditError: an array the model does not have, or one of another shape.
    """
    received = _single(msg.content.array_records, "ArrayRecord", "train message")
    state = model.state_dict()
    unknown = [name for name in received if name not in state]
    if unknown:
        raise SegauditError(f"the received ArrayRecord holds {unknown[0]!r}, which the model does not have")
    copied = copy.deepcopy(model)
    copied.load_state_dict({name: _tensor(received, name, state[name]) for name in received}, strict=False)
    return copied


def decision_name(msg: Message, context: Context, suffix: str) -> str:
    """``round-<R>-node-<node_id><suffix>``: R from :func:`train_settings`, the node id from ``context``."""
    return f"round-{train_settings(msg)['round']}-node-{int(context.node_id)}{suffix}"


def _train_mod(name: str, model: nn.Module, handle: Handler) -> Mod:
    """The mod shared by the gate and the capture: checks the train message, calls the app, rebuilds the update
    (:func:`outgoing_update`) and lets ``handle`` make the reply; an error reply (reason ``"<name>: ..."``)
    replaces what cannot be checked."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        try:
            train_settings(msg)
            _single(msg.content.array_records, "ArrayRecord", "train message")
        except SegauditError as error:
            return _error(msg, f"{name}: {error}")
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            return handle(msg, context, reply, outgoing_update(model, msg, reply))
        except SegauditError as error:
            return _error(msg, f"{name}: {error}")

    return mod


def _error(msg: Message, reason: str) -> Message:
    """The error reply to ``msg`` (``MOD_FAILED_PRECONDITION``) with a one-line ``reason``, logged."""
    reason = " ".join(reason.split())
    _LOG.warning(reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _single(records, label: str, where: str):
    """The one record of ``records`` (a message content's ``array_records`` or ``config_records``)."""
    if len(records) != 1:
        raise SegauditError(f"the {where} must hold exactly one {label}, found {len(records)}")
    return next(iter(records.values()))


def _reply_metrics(reply: Message) -> MetricRecord | None:
    """The reply's MetricRecord (``None`` without one); more than one is refused (strategies expect one)."""
    records = reply.content.metric_records
    if len(records) > 1:
        raise SegauditError(f"the reply must hold at most one MetricRecord, found {len(records)}")
    return next(iter(records.values()), None)


def _tensor(record: ArrayRecord, name: str, like: torch.Tensor) -> torch.Tensor:
    """``record[name]`` as a tensor, refused unless it has ``like``'s shape and dtype."""
    value = torch.from_numpy(record[name].numpy())
    if value.shape != like.shape:
        raise SegauditError(f"array {name!r} has shape {tuple(value.shape)} but the model's has {tuple(like.shape)}: "
                            "the weights were made for another model")
    if value.dtype != like.dtype:
        raise SegauditError(f"array {name!r} has dtype {str(value.dtype)[6:]} but the model's has "
                            f"{str(like.dtype)[6:]}: the weights were cast or made for another model")
    return value


def _count(value: Any, key: str, where: str, minimum: int = 1) -> int:
    """``value`` as an integer of at least ``minimum`` (integral floats accepted), else a SegauditError naming
    ``key``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()
    if not ok or int(value) < minimum:
        raise SegauditError(f"key {key!r} of the {where} must be an integer of at least {minimum}, got {value!r}")
    return int(value)

