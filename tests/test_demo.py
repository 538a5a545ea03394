"""The demo pipeline end to end on a tiny budget (the real budget runs in `make demo`)."""
import json

import pytest

from segaudit import SegauditError
from segaudit.demo import run_demo
from segaudit.models import load_model
from segaudit.updates import load_update


def test_demo_writes_summary_model_and_updates(tmp_path):
    out = run_demo(tmp_path / "demo", steps=3, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["steps"] == 3 and 0 <= summary["training"]["heldout_dice"] <= 1
    assert set(summary["updates"]) == {"fedsgd_b1", "fedsgd_b4", "fedavg_b4_k4"}
    assert summary["updates"]["fedavg_b4_k4"]["local_steps"] == 4
    model = load_model(out / "model")
    update = load_update(out / "updates" / "fedsgd_b4.safetensors")
    assert update.meta.batch_size == 4 and set(update.tensors) == {n for n, _ in model.named_parameters()}
    assert "| fedsgd_b1 | fedsgd | 1 |" in (out / "summary.md").read_text()
    with pytest.raises(SegauditError, match="pass --force"):
        run_demo(out, steps=1, progress=False)
