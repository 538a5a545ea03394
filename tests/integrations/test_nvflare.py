"""The NVFlare task-result filter, with NVFlare's own DXO, Shareable and FLContext."""
import copy
import importlib
import sys

import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext

from segaudit import SegauditError
from segaudit.data import make_batch
from segaudit.fl import client_update
from segaudit.integrations.nvflare import LeakageGateFilter
from segaudit.leakage import gate_update


def weight_diff(tiny_unet, nuclei, n, **meta):
    """A FedAvg client's WEIGHT_DIFF DXO for a batch of ``n`` 32 px crops, and the plain update."""
    model = tiny_unet()
    update = client_update(model, make_batch(nuclei, list(range(n)), size=32, fit="crop", seed=0), mode="fedavg",
                           local_steps=2, lr=0.01)
    data = {k: v.numpy() for k, v in update.tensors.items()}
    return model, update, DXO(DataKind.WEIGHT_DIFF, data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 2, **meta})


def test_block_replaces_a_risky_update_by_a_filter_error_and_passes_a_safe_one(tiny_unet, nuclei):
    model, update, dxo = weight_diff(tiny_unet, nuclei, 1, segaudit_batch_size=1)
    gate = LeakageGateFilter(copy.deepcopy(model), size=32)
    reply = gate.process(dxo.to_shareable(), FLContext())
    assert reply.get_return_code() == ReturnCode.TASK_RESULT_FILTER_ERROR and "data" not in reply
    expected = gate_update(model, update, size=32)  # the same score as segaudit's own gate on that update
    assert reply.get_header("segaudit_risk") == pytest.approx(expected.risk) and expected.risk > 0.5
    assert reply.get_header("segaudit_reason").startswith("segaudit leakage gate blocked the update: risk 1.00")

    model, _, dxo = weight_diff(tiny_unet, nuclei, 8, segaudit_batch_size=8)
    passed = LeakageGateFilter(copy.deepcopy(model), size=32).process(dxo.to_shareable(), FLContext())
    out = from_shareable(passed)
    assert passed.get_return_code() == ReturnCode.OK and out.get_meta_prop("segaudit_blocked") == 0
    assert out.get_meta_prop("segaudit_risk") < 0.5
    assert all((out.data[k] == v).all() for k, v in dxo.data.items())  # the tensors leave unchanged


def test_flag_keeps_the_update_and_records_the_risk(tiny_unet, nuclei):
    model, _, dxo = weight_diff(tiny_unet, nuclei, 1)
    gate = LeakageGateFilter(copy.deepcopy(model), size=32, action="flag", batch_size=1)  # N from the filter
    out = from_shareable(gate.process(dxo.to_shareable(), FLContext()))
    assert out.get_meta_prop("segaudit_risk") == pytest.approx(gate.last.risk) and gate.last.above
    assert out.get_meta_prop("segaudit_blocked") == 0 and out.get_meta_prop("segaudit_above") == 1
    assert "LeakageGateFilter" in out.get_filter_history()


def test_weights_results_and_foreign_tensors_are_refused(tiny_unet, nuclei):
    model, _, dxo = weight_diff(tiny_unet, nuclei, 1, segaudit_batch_size=1)
    gate = LeakageGateFilter(copy.deepcopy(model), size=32)
    with pytest.raises(SegauditError, match="send DataKind.WEIGHT_DIFF"):
        gate.process(DXO(DataKind.WEIGHTS, dxo.data).to_shareable(), FLContext())
    with pytest.raises(SegauditError, match="'fc.weight', which the filter's model does not have"):
        gate.process(DXO(DataKind.WEIGHT_DIFF, {**dxo.data, "fc.weight": dxo.data["segmentation_head.0.bias"]},
                         meta={"segaudit_batch_size": 1}).to_shareable(), FLContext())
    with pytest.raises(SegauditError, match="how many samples are behind the update"):
        gate.process(DXO(DataKind.WEIGHT_DIFF, dxo.data).to_shareable(), FLContext())


def test_a_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvflare", None)  # as if nvflare were not installed
    monkeypatch.delitem(sys.modules, "segaudit.integrations.nvflare")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nvflare" else object())
    with pytest.raises(SegauditError, match=r"^segaudit.integrations.nvflare needs pip install 'segaudit\[nvflare\]'"):
        importlib.import_module("segaudit.integrations.nvflare")


def test_global_weights_reach_the_model(tiny_unet):
    model = tiny_unet()
    gate = LeakageGateFilter(copy.deepcopy(model), size=32)
    weights = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    gate.set_global_weights(weights)
    assert all(bool((v == 0).all()) for v in gate.model.state_dict().values())


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, "size must be a positive number of pixels"),
    ({"threshold": 1.5}, r"threshold must be in \[0, 1\]"),
    ({"action": "drop"}, "action must be 'block' or 'flag'"),
    ({"client_mode": "test"}, "client mode must be 'train' or 'eval'"),
])
def test_bad_arguments_are_refused_at_construction(tiny_unet, kwargs, match):
    with pytest.raises(SegauditError, match=match):
        LeakageGateFilter(tiny_unet(), **{"size": 32, **kwargs})
