"""Matching objectives against hand-computed values; the attacker's simulation against the client's."""
import math

import pytest
import torch
import torch.nn.functional as F

from segaudit import SegauditError
from segaudit.attacks.objectives import GradientMatcher, select_names, simulate_update
from segaudit.fl import client_update
from segaudit.models import build_model
from segaudit.types import Batch

A = {"enc.w": torch.tensor([1.0, 0.0]), "head.w": torch.tensor([3.0, 4.0])}
B = {"enc.w": torch.tensor([0.0, 2.0]), "head.w": torch.tensor([3.0, 4.0])}


def test_l2_known_answer():
    assert GradientMatcher(B, "l2")(A).item() == pytest.approx(1 + 4)
    assert GradientMatcher(B, "l2", weights={"enc": 0.5})(A).item() == pytest.approx(2.5)


def test_cosine_known_answer():
    # one vector: dot = 0 + 25, |a| = sqrt(26), |b| = sqrt(29)
    assert GradientMatcher(B, "cosine")(A).item() == pytest.approx(1 - 25 / math.sqrt(26 * 29))


def test_layer_cosine_known_answer_and_subset():
    # per tensor: enc cos 0 -> 1, head cos 1 -> 0; mean 0.5
    assert GradientMatcher(B, "layer_cosine")(A).item() == pytest.approx(0.5)
    assert GradientMatcher(B, "layer_cosine", weights={"head": 3.0})(A).item() == pytest.approx(0.25)
    assert GradientMatcher(B, "layer_cosine", layers=["head"])(A).item() == pytest.approx(0.0)
    zero = {"enc.w": torch.zeros(2), "head.w": torch.tensor([3.0, 4.0])}
    assert GradientMatcher(zero, "layer_cosine")(A).item() == pytest.approx(0.0)  # zero target skipped


def test_layer_log_cosine_known_answer():
    # enc distance 1 -> log(1 + 1/1e-4), head distance 0 -> 0; mean of the two
    assert GradientMatcher(B, "layer_log_cosine")(A).item() == pytest.approx(math.log(10001) / 2, rel=1e-5)
    assert GradientMatcher(B, "layer_log_cosine", layers=["head"])(A).item() == pytest.approx(0.0, abs=1e-6)
    # a distance far below eps counts linearly: d / eps
    near = {"enc.w": torch.tensor([1.0, 0.01]), "head.w": torch.tensor([3.0, 4.0])}
    d = 1 - 0.01 / math.sqrt(1.0001)
    exact = {"enc.w": torch.tensor([0.0, 1.0]), "head.w": torch.tensor([3.0, 4.0])}
    value = GradientMatcher(exact, "layer_log_cosine", layers=["enc"])(near).item()
    assert value == pytest.approx(math.log1p(d / 1e-4), rel=1e-5)


def test_select_names_refuses_unknown_layer():
    assert select_names(A, ["enc"]) == ["enc.w"]
    with pytest.raises(SegauditError, match="'decoder' matches no tensor"):
        select_names(A, ["decoder"])
    with pytest.raises(SegauditError, match="unknown objective 'huber'"):
        GradientMatcher(B, "huber")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2).double()
    g = torch.Generator().manual_seed(3)
    batch = Batch(torch.randn(3, 1, 32, 32, generator=g, dtype=torch.float64),
                  torch.randint(0, 2, (3, 32, 32), generator=g), ("bg", "fg"))
    return model, batch


@pytest.mark.parametrize("kw", [dict(mode="fedsgd"), dict(mode="fedsgd", loss="dice_ce", reduction="sum"),
                                dict(mode="fedavg", local_steps=3, lr=0.01, local_batch_size=2),
                                dict(mode="fedsgd", train_mode=False)])
def test_simulation_reproduces_client(setup, kw):
    model, batch = setup
    update = client_update(model, batch, **kw)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    soft = F.one_hot(batch.masks, 2).movedim(-1, 1).double()  # soft targets equal to the hard ones
    sim = simulate_update(model, params, buffers, batch.images, soft, update.meta, create_graph=False)
    for name, t in update.tensors.items():
        torch.testing.assert_close(sim[name], t, rtol=1e-6, atol=1e-9)


def test_simulation_is_differentiable_in_images_and_targets(setup):
    model, batch = setup
    update = client_update(model, batch)
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = batch.images.clone().requires_grad_()
    y = torch.zeros(3, 2, 32, 32, dtype=torch.float64, requires_grad=True)
    sim = simulate_update(model, params, dict(model.named_buffers()), x, y.softmax(1), update.meta)
    loss = GradientMatcher(update.tensors, "layer_cosine")(sim)
    gx, gy = torch.autograd.grad(loss, (x, y))
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0
