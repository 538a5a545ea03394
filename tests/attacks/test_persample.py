"""Batched restarts: one pass gives every restart's exact matching loss and gradient."""
import pytest
import torch

from segaudit.attacks import ATTACKS
from segaudit.attacks.inversion import MatchingLoss
from segaudit.attacks.objectives import GradientMatcher, simulate_update
from segaudit.attacks.persample import GroupedMatcher, unsupported
from segaudit.fl import client_update, trainable_params
from segaudit.models import build_model
from segaudit.types import Batch, Prior, UpdateMeta

TINY = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
CASES = {  # arch -> (build options, image shape): BatchNorm, dilated/depthwise convs, GroupNorm, Linear
    "unet": (TINY, (1, 32, 32)),
    "deeplabv3plus": ({"encoder_depth": 4, "encoder_output_stride": 8}, (1, 32, 32)),
    "fpn": ({}, (3, 32, 32)),
    "lenet": ({"size": 32}, (3, 32, 32)),
}


def tiny_unet():
    torch.manual_seed(0)
    return build_model("unet", in_channels=1, classes=2, **TINY), (1, 32, 32)


def frozen(arch):
    options, shape = CASES[arch]
    torch.manual_seed(0)
    model = build_model(arch, in_channels=shape[0], classes=2, **options).eval()
    names = list(trainable_params(model))  # what a client shares (unused encoder stages excluded)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, shape, names


@pytest.mark.parametrize("arch", CASES)
@pytest.mark.parametrize("objective,support", [("layer_cosine", False), ("cosine", False), ("layer_cosine", True),
                                               ("layer_log_cosine", False)])
def test_grouped_losses_and_gradients_equal_one_restart_at_a_time(arch, objective, support):
    model, shape, names = frozen(arch)
    params = {n: p for n, p in model.named_parameters() if n in names}
    buffers = dict(model.named_buffers())
    gen = torch.Generator().manual_seed(1)
    target = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    if support:
        target = {n: t * (torch.rand(t.shape, generator=gen) > 0.5) for n, t in target.items()}
    matcher = GradientMatcher(target, objective, support_only=support)
    meta = UpdateMeta("fedsgd", 2, train_mode=False)
    assert unsupported(model, matcher, meta) is None
    r, n = 3, 2
    images = torch.randn(r, n, *shape, generator=gen, requires_grad=True)
    soft = torch.rand(r, n, 2, *shape[1:], generator=gen) if arch != "lenet" else torch.rand(r, n, 2, generator=gen)
    soft = soft.softmax(2)
    engine = GroupedMatcher(model, params, buffers, matcher, meta)
    grouped = engine(images, soft)
    if arch == "unet":  # ResNet blocks change BatchNorm outputs in place (ReLU, residual +=): those are copied
        assert engine.copied and all(isinstance(m, torch.nn.BatchNorm2d) for m in engine.copied)
    one_by_one = torch.stack([matcher(simulate_update(model, params, buffers, images[i], soft[i], meta))
                              for i in range(r)])
    torch.testing.assert_close(grouped, one_by_one, atol=1e-6, rtol=1e-5)
    g1, = torch.autograd.grad(grouped.sum(), images)
    g2, = torch.autograd.grad(one_by_one.sum(), images)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)


def test_unsupported_cases_are_named():
    model, _, names = frozen("unet")
    matcher = GradientMatcher({n: p for n, p in model.named_parameters() if n in names}, "layer_cosine")
    assert "train-mode BatchNorm" in unsupported(model, matcher, UpdateMeta("fedsgd", 1, train_mode=True))
    assert "FedAvg" in unsupported(model, matcher, UpdateMeta("fedavg", 1, lr=0.1, train_mode=False))
    l2 = GradientMatcher(matcher.target and dict(zip(matcher.names, matcher.target)), "l2")
    assert "'l2'" in unsupported(model, l2, UpdateMeta("fedsgd", 1, train_mode=False))


@pytest.mark.parametrize("name", ["seg", "ig"])
def test_batched_restarts_reach_the_sequential_result(name):
    model, shape = tiny_unet()
    gen = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(1, *shape, generator=gen), (torch.rand(1, *shape[1:], generator=gen) > 0.5).long(),
                  ("background", "nucleus"))
    update = client_update(model, batch, train_mode=False)
    prior = Prior.from_batch_shape(batch)
    for steps, tolerance in ((1, 1e-5), (6, 2e-2)):  # signed steps amplify float rounding a little
        batched = ATTACKS.create(name, steps=steps, restarts=3, seed=0).run(model, update, prior)
        one_by_one = ATTACKS.create(name, steps=steps, restarts=3, seed=0, restart_batch=1).run(model, update, prior)
        assert batched.extras["restarts_batched"] == "yes"
        assert batched.restart_losses == pytest.approx(one_by_one.restart_losses, rel=tolerance)
    assert len(set(batched.restart_losses)) == 3  # three different restarts


def test_train_mode_updates_fall_back_to_one_restart_at_a_time():
    model, shape = tiny_unet()
    batch = Batch(torch.rand(2, *shape), torch.zeros(2, *shape[1:], dtype=torch.long), ("background", "nucleus"))
    update = client_update(model, batch, train_mode=True)
    loss = MatchingLoss(model, update, GradientMatcher(update.tensors, "layer_cosine"))
    assert loss.grouped is None and "train-mode" in loss.sequential_because
    rec = ATTACKS.create("seg", steps=2, restarts=2).run(model, update, Prior.from_batch_shape(batch))
    assert rec.status == "ok" and "train-mode" in rec.extras["restarts_batched"]


def test_a_restart_that_goes_nan_leaves_the_others_alone():
    model, shape = tiny_unet()
    batch = Batch(torch.rand(1, *shape), torch.zeros(1, *shape[1:], dtype=torch.long), ("background", "nucleus"))
    update = client_update(model, batch, train_mode=False)

    class SecondExplodes(type(ATTACKS.create("seg"))):
        def run_restarts(self, loss, prior, gens, extras):
            poison = torch.tensor([1.0, float("nan"), 1.0])[: len(gens)]
            return super().run_restarts(lambda x, y: loss(x, y) * poison, prior, gens, extras)

    rec = SecondExplodes(steps=3, restarts=3).run(model, update, Prior.from_batch_shape(batch))
    assert rec.status == "ok" and rec.restart_status[0] == "ok" and rec.restart_status[2] == "ok"
    assert rec.restart_status[1].startswith("abandoned: matching loss became nan at step 0")
    assert torch.isfinite(rec.images).all()


def test_restart_batch_must_be_positive():
    from segaudit import SegauditError

    with pytest.raises(SegauditError, match="restart_batch=0"):
        ATTACKS.create("seg", restart_batch=0)


def test_true_batch_of_two_matches_exactly():
    """The grouped pass at R=1 equals the client's own gradient (cosine distance 0 at the true data)."""
    model, shape = tiny_unet()
    batch = Batch(torch.rand(2, *shape), (torch.rand(2, *shape[1:]) > 0.5).long(), ("background", "nucleus"))
    update = client_update(model, batch, train_mode=False)
    loss = MatchingLoss(model, update, GradientMatcher(update.tensors, "layer_cosine"))
    onehot = torch.nn.functional.one_hot(batch.masks, 2).movedim(-1, 1).float()
    assert loss.grouped is not None
    images = batch.images[None].requires_grad_()
    assert float(loss(images, onehot[None])[0].detach()) == pytest.approx(0.0, abs=1e-5)


def test_callback_gets_each_restarts_full_size_images_every_step():
    model, shape = tiny_unet()
    batch = Batch(torch.rand(1, *shape), torch.zeros(1, *shape[1:], dtype=torch.long), ("background", "nucleus"))
    update = client_update(model, batch, train_mode=False)
    seen = []
    ATTACKS.create("seg", steps=3, restarts=2, callback=lambda step, x: seen.append((step, tuple(x.shape)))
                   ).run(model, update, Prior.from_batch_shape(batch))
    assert seen == [(step, (1, *shape)) for step in range(3) for _ in range(2)]
