"""The Flower mods (segaudit.integrations.flower) on hand-built Flower messages, and the example app
(examples/flower) in Flower's simulation engine: the gate blocks the batch-1 client, passes the batch-8 one, and
FedAvg's global model is what passed."""
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode  # noqa: E402

from segaudit.cli import main as segaudit_main  # noqa: E402
from segaudit.data import make_batch  # noqa: E402
from segaudit.errors import SegauditError  # noqa: E402
from segaudit.fl import client_update, trainable_params  # noqa: E402
from segaudit.integrations.flower import capture_mod, leakage_gate_mod  # noqa: E402
from segaudit.leakage import gate_update  # noqa: E402
from segaudit.models import load_model  # noqa: E402
from segaudit.updates import load_update  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "flower" / "run.py"
SIZE = 32
CONFIG = {"lr": 0.01, "local-steps": 2, "batch-size": 8, "server-round": 3}
BLOCKED_REASON = "segaudit leakage gate blocked the update: risk 1.00 > 0.50 (riskiest: encoder.stem)"


@pytest.fixture(scope="module")
def model(tiny_unet):
    return tiny_unet()


def train_message(model, config=None, message_type=MessageType.TRAIN, group_id=""):
    """A train message as a SuperNode hands it to the ClientApp: the global weights and the config."""
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(dict(config or CONFIG))})
    return Message(content=content, metadata=Metadata(
        run_id=1, message_id="m-1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id=group_id,
        created_at=time.time(), ttl=3600.0, message_type=message_type))


def context():
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


class Client:
    """A real ``call_next``: FedAvg on the first ``n`` nuclei images (segaudit's client), replying with the received
    weights plus the delta, the client's buffers and ``num-examples`` (``metrics=False``: no MetricRecord)."""

    def __init__(self, model, nuclei, n, metrics=True, drop=None, add=None, change=None):
        self.model, self.nuclei, self.n, self.metrics, self.drop, self.add = model, nuclei, n, metrics, drop, add
        self.change = change  # name -> how the sent array is altered
        self.calls, self.update = 0, None

    def __call__(self, msg, ctxt):
        self.calls += 1
        batch = make_batch(self.nuclei, list(range(self.n)), size=SIZE)
        self.update = client_update(self.model, batch, mode="fedavg", lr=0.01, local_steps=2, local_batch_size=self.n)
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        state.update({k: state[k] + t for k, t in self.update.tensors.items()})
        state.update(self.update.buffers)
        if self.drop:
            del state[self.drop]
        if self.add:
            state[self.add] = torch.zeros(1)
        for name, alter in (self.change or {}).items():
            state[name] = alter(state[name])
        content = RecordDict({"arrays": ArrayRecord(state)})
        if self.metrics:
            content["metrics"] = MetricRecord({"num-examples": self.n})
        return Message(content, reply_to=msg)


def test_the_gate_blocks_a_one_image_update_with_a_one_line_reason(model, nuclei, tmp_path):
    client = Client(model, nuclei, 1)
    reply = leakage_gate_mod(model, SIZE, log_dir=tmp_path)(train_message(model), context(), client)
    assert reply.has_error() and not reply.has_content()
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert reply.error.reason == BLOCKED_REASON
    assert reply.metadata.dst_node_id == 0 and reply.metadata.reply_to_message_id == "m-1"
    log = json.loads((tmp_path / "round-3-node-7.json").read_text())
    assert log == {"round": 3, "node": 7, "partition": 0, "batch_size": 1, "risk": 1.0, "blocked": True,
                   "threshold": 0.5, "action": "block", "riskiest": log["riskiest"]}
    assert log["riskiest"][0] == "encoder.stem"


def test_the_gate_passes_an_eight_image_update_and_adds_its_risk(model, nuclei, tmp_path):
    client = Client(model, nuclei, 8)
    reply = leakage_gate_mod(model, SIZE, log_dir=tmp_path)(train_message(model), context(), client)
    assert not reply.has_error()
    metrics = reply.content["metrics"]
    truth = gate_update(model, client.update, size=SIZE)  # segaudit's own update, not the one rebuilt from Flower
    assert metrics["segaudit-risk"] == pytest.approx(truth.risk, abs=1e-3) and truth.risk < 0.5
    assert metrics["segaudit-risk"] == pytest.approx(3136 / 8192, abs=1e-3)  # 64 * 7 * 7 / (8 * 32 * 32)
    assert metrics["segaudit-blocked"] == 0 and metrics["segaudit-above"] == 0 and metrics["num-examples"] == 8
    assert list(reply.content["arrays"].keys()) == list(model.state_dict())
    assert json.loads((tmp_path / "round-3-node-7.json").read_text())["blocked"] is False


def test_flag_mode_reports_the_risk_and_sends_the_update(model, nuclei):
    reply = leakage_gate_mod(model, SIZE, action="flag")(train_message(model), context(), Client(model, nuclei, 1))
    assert not reply.has_error()
    metrics = reply.content["metrics"]
    assert metrics["segaudit-risk"] == 1.0 and metrics["segaudit-blocked"] == 0 and metrics["segaudit-above"] == 1


def test_a_reply_without_metrics_gets_a_metric_record_and_n_from_the_config(model, nuclei, tmp_path):
    config = {**CONFIG, "batch-size": 2}
    config.pop("server-round")
    msg = train_message(model, config, group_id="5")
    reply = leakage_gate_mod(model, SIZE, action="flag", log_dir=tmp_path)(
        msg, context(), Client(model, nuclei, 2, metrics=False))
    assert set(reply.content.metric_records) == {"metrics"}
    assert set(reply.content["metrics"]) == {"segaudit-risk", "segaudit-blocked", "segaudit-above"}
    log = json.loads((tmp_path / "round-5-node-7.json").read_text())  # no server-round: the group id
    assert log["batch_size"] == 2 and log["round"] == 5


def test_other_messages_pass_through_untouched(model):
    msg = train_message(model, message_type=MessageType.EVALUATE)
    seen = []

    def evaluate(m, c):
        seen.append(m)
        return Message(RecordDict({"metrics": MetricRecord({"loss": 0.5})}), reply_to=m)

    for mod in (leakage_gate_mod(model, SIZE), capture_mod(model, "unused")):
        reply = mod(msg, context(), evaluate)
        assert seen[-1] is msg and dict(reply.content["metrics"]) == {"loss": 0.5}


def test_an_error_reply_passes_through(model):
    failed = []

    def crash(m, c):
        failed.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=m))
        return failed[-1]

    assert leakage_gate_mod(model, SIZE)(train_message(model), context(), crash) is failed[-1]


@pytest.mark.parametrize("key", ["lr", "local-steps", "batch-size"])
def test_a_missing_config_key_is_named_and_nothing_is_trained(model, nuclei, key):
    config = {k: v for k, v in CONFIG.items() if k != key}
    client = Client(model, nuclei, 1)
    for mod, name in ((leakage_gate_mod(model, SIZE), "segaudit leakage gate"), (capture_mod(model, "x"),
                                                                                  "segaudit capture")):
        reply = mod(train_message(model, config), context(), client)
        assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
        assert reply.error.reason == (f"{name}: config key '{key}' is missing from the train message's "
                                      "ConfigRecord; the server must send it")
    assert client.calls == 0


@pytest.mark.parametrize("change, match", [({"lr": -1.0}, "'lr' must be a positive number, got -1.0"),
                                           ({"local-steps": 0}, "'local-steps' .* at least 1, got 0"),
                                           ({"client-mode": "test"}, "'client-mode' must be 'train' or 'eval'")])
def test_a_malformed_config_value_is_named(model, change, match):
    reply = leakage_gate_mod(model, SIZE)(train_message(model, {**CONFIG, **change}), context(), None)
    assert reply.has_error() and reply.error.reason.startswith("segaudit leakage gate: ")
    assert re.search(match, reply.error.reason)


@pytest.mark.parametrize("drop, add, what", [("encoder.conv1.weight", None, "lacks 'encoder.conv1.weight'"),
                                             (None, "extra", "holds 'extra', which was not received")])
def test_reply_arrays_that_do_not_match_the_received_ones_are_refused(model, nuclei, drop, add, what):
    reply = leakage_gate_mod(model, SIZE)(train_message(model), context(), Client(model, nuclei, 8, drop=drop, add=add))
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert reply.error.reason == ("segaudit leakage gate: the reply's ArrayRecord does not match the received one: "
                                  f"it {what}")


@pytest.mark.parametrize("alter, what", [
    (lambda t: t[:1], r"has shape \(1, 1, 7, 7\) but the model's has \(64, 1, 7, 7\)"),
    (lambda t: t.double(), "has dtype float64 but the model's has float32"),
])
def test_a_sent_array_of_another_shape_or_dtype_is_named_and_never_passed(model, nuclei, alter, what):
    reply = leakage_gate_mod(model, SIZE, action="flag")(
        train_message(model), context(), Client(model, nuclei, 8, change={"encoder.conv1.weight": alter}))
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert re.search(f"segaudit leakage gate: array 'encoder.conv1.weight' {what}", reply.error.reason)


def test_a_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)  # as if flwr were not installed
    monkeypatch.delitem(sys.modules, "segaudit.integrations.flower")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else object())
    with pytest.raises(SegauditError, match=r"^segaudit.integrations.flower needs pip install 'segaudit\[flower\]'"):
        importlib.import_module("segaudit.integrations.flower")


def test_the_capture_file_holds_what_the_reply_sends_minus_what_was_received(model, nuclei, tmp_path):
    msg, client = train_message(model), Client(model, nuclei, 4)
    returned = []

    def call_next(m, c):
        returned.append(client(m, c))
        return returned[-1]

    reply = capture_mod(model, tmp_path)(msg, context(), call_next)
    assert reply is returned[0] and set(reply.content["metrics"]) == {"num-examples"}  # unchanged
    update = load_update(tmp_path / "round-3-node-7.safetensors")
    sent, received = reply.content["arrays"].to_torch_state_dict(), msg.content["arrays"].to_torch_state_dict()
    assert set(update.tensors) == set(trainable_params(model))
    for name, delta in update.tensors.items():
        assert torch.equal(delta, sent[name] - received[name]), name
        assert torch.allclose(delta, client.update.tensors[name], atol=1e-6), name
    assert set(update.buffers) == {n for n, _ in model.named_buffers()}
    assert all(torch.equal(value, sent[name]) for name, value in update.buffers.items())
    meta = update.meta
    assert (meta.mode, meta.batch_size, meta.lr, meta.local_steps, meta.local_batch_size, meta.train_mode) == \
        ("fedavg", 4, 0.01, 2, 4, True)


@pytest.mark.parametrize("kwargs, match", [({"action": "drop"}, r"action must be 'block' or 'flag', got 'drop'"),
                                           ({"threshold": 1.5}, r"threshold must be in \[0, 1\], got 1.5"),
                                           ({"threshold": -0.1}, r"threshold must be in \[0, 1\], got -0.1"),
                                           ({"size": 0}, r"size must be a positive number of pixels, got 0")])
def test_bad_gate_arguments_are_refused_at_construction(model, kwargs, match):
    with pytest.raises(SegauditError, match=match):
        leakage_gate_mod(model, **{"size": SIZE, **kwargs})


def run_example(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_in_flowers_simulation_the_batch_1_client_is_blocked_and_fedavg_keeps_what_passed(tmp_path):
    out = tmp_path / "run"
    done = run_example("--data", "nuclei", "--size", str(SIZE), "--clients", "2", "--rounds", "1",
                       "--batch-sizes", "1,8", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "rounds.json").read_text())["clients"]
    assert [(r["round"], r["client"], r["batch_size"], r["blocked"]) for r in rows] == [(1, 0, 1, True),
                                                                                     (1, 1, 8, False)]
    assert rows[0]["risk"] == 1.0 and rows[1]["risk"] == pytest.approx(3136 / 8192, abs=1e-3)
    one, eight = (load_update(out / r["update"]) for r in rows)  # the blocked update was captured too
    assert (one.meta.batch_size, eight.meta.batch_size) == (1, 8)
    before = load_model(out / "models" / "global-0").state_dict()
    after = load_model(out / "models" / "global-1").state_dict()
    for name, delta in eight.tensors.items():  # FedAvg over what passed: the batch-8 client's sent weights
        torch.testing.assert_close(after[name], before[name] + delta, rtol=0, atol=1e-6)
    stem = "encoder.conv1.weight"
    assert not torch.allclose(after[stem], before[stem] + one.tensors[stem], atol=1e-6)
    assert not torch.allclose(after[stem], before[stem] + (one.tensors[stem] + eight.tensors[stem]) / 2, atol=1e-6)
    assert all(torch.equal(after[name], value.to(after[name].dtype)) for name, value in eight.buffers.items())
    # segaudit's own gate reads the captured files: exit 3 above the threshold, 0 below
    check = ["check-update", "--model", str(out / "models" / "global-0"), "--size", str(SIZE), "--update"]
    assert [segaudit_main([*check, str(out / r["update"])]) for r in rows] == [3, 0]


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "1,x"], "error: --batch-sizes must be positive integers separated by commas, got '1,x'"),
    (["--batch-sizes", "10,10"], "error: 2 clients with batch sizes 10,10 need 20 distinct images but nuclei holds "
                                 "16; use fewer clients or smaller batches"),
    (["--clients", "0"], "error: --clients must be at least 1, got 0")])
def test_the_example_refuses_bad_arguments_with_one_line(tmp_path, args, message):
    done = run_example("--data", "nuclei", "--out", str(tmp_path / "run"), *args, timeout=120)
    assert (done.returncode, done.stderr.strip()) == (2, message)
    assert not (tmp_path / "run").exists()
