"""The surrogate ReLU curvature: exact values and first derivatives, a sigmoid second derivative."""
import pytest
import torch
import torch.nn.functional as F

from segaudit import SegauditError
from segaudit.attacks import ATTACKS
from segaudit.attacks.curvature import relu_curvature
from segaudit.attacks.inversion import MatchingLoss
from segaudit.attacks.objectives import GradientMatcher
from segaudit.fl import client_update
from segaudit.models import build_model
from segaudit.types import Batch, Prior

RELUS = {
    "F.relu": lambda z: F.relu(z),
    "F.relu inplace": lambda z: F.relu(z * 1, inplace=True),
    "torch.relu": torch.relu,
    "Tensor.relu": lambda z: z.relu(),
    "nn.ReLU(inplace=True)": lambda z: torch.nn.ReLU(inplace=True)(z * 1),
}


@pytest.mark.parametrize("relu", RELUS.values(), ids=RELUS.keys())
def test_second_derivative_is_the_sigmoid_surrogate_and_the_rest_is_exact(relu):
    z = torch.tensor([-2.0, -0.1, 0.05, 0.3, 1.5], requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    with relu_curvature(0.5):
        y = relu(z)
        (g,) = torch.autograd.grad((y * w).sum(), z, create_graph=True)
    assert torch.equal(y.detach(), z.detach().clamp_min(0))  # forward exact
    assert torch.equal(g.detach(), w * (z.detach() > 0))  # first derivative exact
    (h,) = torch.autograd.grad(g.sum(), z)
    tau = 0.5 * z.detach().std()
    s = torch.sigmoid(z.detach() / tau)
    torch.testing.assert_close(h, w * s * (1 - s) / tau)  # hand-computed surrogate
    (g0,) = torch.autograd.grad((relu(z) * w).sum(), z, create_graph=True)  # outside: plain ReLU again
    (h0,) = torch.autograd.grad(g0.sum(), z, allow_unused=True)
    assert h0 is None or not h0.any()


def test_matching_loss_values_stay_exact_and_only_its_gradient_changes():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4]).eval()
    gen = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(1, 1, 32, 32, generator=gen), (torch.rand(1, 32, 32, generator=gen) > 0.5).long(),
                  ("background", "nucleus"))
    update = client_update(model, batch, train_mode=False)
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.rand(2, 1, 1, 32, 32, generator=gen, requires_grad=True)
    soft = torch.rand(2, 1, 2, 32, 32, generator=gen).softmax(2)
    onehot = F.one_hot(batch.masks, 2).movedim(-1, 1).float()[None]
    grads, values = {}, {}
    for curvature in (0.0, 0.05):
        for batched in (True, False):
            loss = MatchingLoss(model, update, GradientMatcher(update.tensors, "layer_log_cosine"),
                                batched=batched, relu_curvature=curvature)
            assert (loss.grouped is not None) == batched
            value = loss(images, soft)
            values[curvature, batched] = value.detach()
            (grads[curvature, batched],) = torch.autograd.grad(value.sum(), images)
            at_truth = loss(batch.images[None].requires_grad_(), onehot)
            assert float(at_truth.detach()) == pytest.approx(0.0, abs=1e-2)  # log1p(d / 1e-4): d ~ 1e-7 (float32)
    torch.testing.assert_close(values[0.05, True], values[0.0, True], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(values[0.05, False], values[0.0, True], atol=1e-5, rtol=1e-5)
    assert (grads[0.05, True] - grads[0.05, False]).norm() < 1e-3 * grads[0.05, False].norm()  # both paths agree
    change = (grads[0.05, True] - grads[0.0, True]).norm() / grads[0.0, True].norm()
    assert change > 0.05  # the surrogate reaches the images


def test_negative_curvature_is_refused():
    with pytest.raises(SegauditError, match="relu_curvature must be a finite number >= 0, got -1"):
        ATTACKS.create("seg", relu_curvature=-1)


@pytest.mark.parametrize("batch_size,steps,expected", [(1, 200, ("layer_log_cosine", 0.05)),
                                                       (1, 100, ("layer_cosine", 0.0)),
                                                       (4, 500, ("layer_cosine", 0.0))])
def test_seg_picks_its_loss_by_batch_size_and_budget(batch_size, steps, expected):
    batch = Batch(torch.zeros(batch_size, 1, 8, 8), torch.zeros(batch_size, 8, 8, dtype=torch.long), ("a", "b"))
    assert ATTACKS.create("seg", steps=steps).loss_settings(Prior.from_batch_shape(batch)) == expected
    chosen = ATTACKS.create("seg", steps=steps, objective="cosine", relu_curvature=0.1)
    assert chosen.loss_settings(Prior.from_batch_shape(batch)) == ("cosine", 0.1)  # explicit choices win
