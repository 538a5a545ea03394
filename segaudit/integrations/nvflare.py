"""An NVFlare filter that gates what a client sends: :class:`LeakageGateFilter`, for ``task_result_filters``.

Install with ``pip install 'segaudit[nvflare]'``. The filter scores each outgoing weight difference (a DXO of kind
``WEIGHT_DIFF``, name -> array) with :func:`segaudit.leakage.gate_update` and blocks it (the server receives
``TASK_RESULT_FILTER_ERROR`` instead of the update) or flags it (the DXO's meta gets ``segaudit_risk``,
``segaudit_blocked`` and ``segaudit_above``). Client job config::

    "task_result_filters": [{"tasks": ["train"], "filters": [{"path":
        "segaudit.integrations.nvflare.LeakageGateFilter", "args": {"model": ..., "size": 64}}]}]

What the gate needs besides the tensors is read from the DXO's meta, falling back to the filter's arguments:
``NUM_STEPS_CURRENT_ROUND`` (local SGD steps), ``segaudit_batch_size`` (N, the samples behind the update),
``segaudit_lr`` and ``segaudit_client_mode``. The gate's probe gradient uses the weights of the filter's ``model``
(keep it at the round's global weights, e.g. with :meth:`LeakageGateFilter.set_global_weights`); its count of
determined inputs depends on the architecture and N only.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..errors import SegauditError
from ..fl import trainable_params
from ..leakage import gate_update
from ..leakage.report import GateResult
from ..types import ClientProtocol, ClientUpdate, UpdateMeta
from .gating import blocked_reason, check_gate_arguments, require_extra

require_extra("nvflare", "nvflare")  # before nvflare is imported: one line instead of an ImportError

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable  # noqa: E402
from nvflare.apis.dxo_filter import DXOFilter  # noqa: E402
from nvflare.apis.fl_constant import ReturnCode  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.apis.shareable import Shareable, make_reply  # noqa: E402

RISK_KEY, BLOCKED_KEY, ABOVE_KEY = "segaudit_risk", "segaudit_blocked", "segaudit_above"


class LeakageGateFilter(DXOFilter):
    """Score each outgoing ``WEIGHT_DIFF`` with segaudit's gate; block it or flag it above ``threshold``.

    Args:
        model: the network the clients train (e.g. from :func:`segaudit.models.build_model`), at the global weights.
        size: side of the clients' square images in pixels.
        threshold: risk above which the update is blocked (``action="block"``) or flagged.
        action: ``"block"`` or ``"flag"``.
        batch_size, lr, local_steps, client_mode: the clients' protocol, when the DXO's meta does not say.

    Raises:
        SegauditError: bad arguments (at construction), or a DXO whose tensors do not fit ``model``.
    """

    def __init__(self, model: nn.Module, size: int, threshold: float = 0.5, action: str = "block",
                 batch_size: int | None = None, lr: float = 0.01, local_steps: int = 1, client_mode: str = "train"):
        super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=[DataKind.WEIGHT_DIFF])
        check_gate_arguments(size, threshold, action)
        ClientProtocol(client_mode=client_mode)  # checks the client mode
        self.model, self.size, self.threshold, self.action = model, size, threshold, action
        self.defaults = {"batch_size": batch_size, "lr": lr, "local_steps": local_steps, "client_mode": client_mode}
        self.last: GateResult | None = None

    def set_global_weights(self, weights: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Load a round's global weights (name -> array) into the filter's model."""
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}
        self.model.load_state_dict(state, strict=False)

    def update_of(self, dxo: DXO) -> ClientUpdate:
        """The :class:`~segaudit.types.ClientUpdate` a ``WEIGHT_DIFF`` DXO carries (parameters; buffers apart)."""
        meta = {**self.defaults, **{k: dxo.get_meta_prop(f"segaudit_{k}") for k in self.defaults
                                    if dxo.get_meta_prop(f"segaudit_{k}") is not None}}
        steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) or meta["local_steps"]
        if meta["batch_size"] is None:
            raise SegauditError("the DXO does not say how many samples are behind the update: set its meta "
                                "'segaudit_batch_size' or the filter's batch_size")
        names = set(trainable_params(self.model))
        buffers = {n for n, _ in self.model.named_buffers()}
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in dxo.data.items() if k in names}
        delta_buffers = {k: torch.as_tensor(np.asarray(v)) for k, v in dxo.data.items() if k in buffers}
        unknown = sorted(set(dxo.data) - names - buffers)
        if unknown:
            raise SegauditError(f"the update has {unknown[0]!r}, which the filter's model does not have")
        current = dict(self.model.named_buffers())
        shared = {k: current[k].detach() + v.to(current[k].dtype) for k, v in delta_buffers.items()}
        return ClientUpdate(tensors, UpdateMeta("fedavg", int(meta["batch_size"]), lr=float(meta["lr"]),
                                                local_steps=int(steps), local_batch_size=int(meta["batch_size"]),
                                                train_mode=meta["client_mode"] == "train"), shared)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        self.last = gate_update(self.model, self.update_of(dxo), threshold=self.threshold, size=self.size)
        blocked = self.last.above and self.action == "block"
        dxo.set_meta_prop(RISK_KEY, float(self.last.risk))
        dxo.set_meta_prop(BLOCKED_KEY, int(blocked))
        dxo.set_meta_prop(ABOVE_KEY, int(self.last.above))
        return dxo

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """The task result, scored; ``TASK_RESULT_FILTER_ERROR`` (with the risk in its headers) when blocked."""
        self.last = None
        out = super().process(shareable, fl_ctx)
        if self.last is None and _is_weights(shareable):
            raise SegauditError("the gate scores weight differences: have the client send DataKind.WEIGHT_DIFF")
        if self.last is not None and self.last.above and self.action == "block":
            reply = make_reply(ReturnCode.TASK_RESULT_FILTER_ERROR)
            reply.set_header(RISK_KEY, float(self.last.risk))
            reply.set_header("segaudit_reason", blocked_reason(self.last))
            return reply
        return out


def _is_weights(shareable: Shareable) -> bool:
    try:
        return from_shareable(shareable).data_kind == DataKind.WEIGHTS
    except Exception:  # not a DXO-based shareable
        return False
