"""Client-update simulation against reference computations."""
import copy

import pytest
import torch
import torch.nn.functional as F

from segaudit import SegauditError
from segaudit.fl import check_update, client_update
from segaudit.losses import soft_dice_loss, task_loss
from segaudit.models import build_model
from segaudit.types import Batch, ClientProtocol, ClientUpdate


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_model("unet", in_channels=1, classes=3)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 1, 32, 32, generator=g)
    masks = torch.randint(0, 3, (4, 32, 32), generator=g)
    return Batch(images, masks, ("a", "b", "c"))


@pytest.mark.parametrize("loss", ["ce", "dice_ce"])
def test_fedsgd_equals_autograd(unet, batch, loss):
    update = client_update(unet, batch, mode="fedsgd", loss=loss)
    ref = copy.deepcopy(unet).train()
    names, params = zip(*[(n, p) for n, p in ref.named_parameters()])
    grads = torch.autograd.grad(task_loss(ref(batch.images), batch.masks, loss), params)
    assert list(update.tensors) == list(names)
    for name, g in zip(names, grads):
        torch.testing.assert_close(update.tensors[name], g, rtol=1e-5, atol=1e-7)
    assert update.meta.batch_size == 4 and update.meta.loss == loss and update.kind == "gradients"


def test_fedavg_equals_hand_written_sgd(unet, batch):
    # float64: BatchNorm over 2 samples is ill-conditioned, float32 rounding would dominate after a few steps
    unet = copy.deepcopy(unet).double()
    batch = Batch(batch.images.double(), batch.masks, batch.class_names)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    update = client_update(unet, batch, mode="fedavg", local_steps=3, lr=0.05, local_batch_size=2)
    ref = copy.deepcopy(unet).train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for idx in ([0, 1], [2, 3], [0, 1]):
        opt.zero_grad()
        F.cross_entropy(ref(batch.images[idx]), batch.masks[idx]).backward()
        opt.step()
    for name, p in ref.named_parameters():  # rtol 1e-4: the summation order differs with the thread count
        torch.testing.assert_close(update.tensors[name], p.detach() - before[name], rtol=1e-4, atol=1e-7)
    # the global model is untouched and the client's BatchNorm statistics are shared
    for name, p in unet.named_parameters():
        assert torch.equal(p, before[name])
    assert torch.allclose(update.buffers["encoder.bn1.running_mean"],
                          dict(ref.named_buffers())["encoder.bn1.running_mean"])
    assert update.meta.local_steps == 3 and update.kind == "delta"


def test_eval_mode_update_leaves_buffers_and_differs(unet, batch):
    train = client_update(unet, batch.subset([0, 1]))
    evald = client_update(unet, batch.subset([0, 1]), train_mode=False)
    assert not evald.meta.train_mode
    assert torch.equal(evald.buffers["encoder.bn1.running_mean"],
                       dict(unet.named_buffers())["encoder.bn1.running_mean"])
    assert not torch.allclose(train.tensors["segmentation_head.0.bias"], evald.tensors["segmentation_head.0.bias"])


def test_soft_dice_known_answer():
    logits = torch.full((1, 2, 2, 2), -20.0)
    logits[0, 1] = 20.0  # predicts class 1 everywhere
    target = torch.tensor([[[1, 1], [0, 0]]])
    # class 0: inter 0, card 2 -> (0+1)/(2+1); class 1: inter 2, card 6 -> 5/7
    expected = 1 - ((1 / 3) + (5 / 7)) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_sum_reduction_scales_with_pixels(unet, batch):
    logits = unet.eval()(batch.images)
    assert task_loss(logits, batch.masks, reduction="sum").item() == pytest.approx(
        task_loss(logits, batch.masks).item() * batch.masks.numel(), rel=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "fedprox"}, "unknown mode"),
    ({"loss": "focal"}, "unknown loss"),
    ({"mode": "fedavg", "local_steps": 0}, "local_steps must be at least 1"),
    ({"mode": "fedavg", "lr": 0.0}, "positive learning rate"),
    ({"mode": "fedavg", "local_batch_size": 9}, "local_batch_size must be in 1..4"),
    ({"mode": "fedavg", "local_batch_size": 0}, "local_batch_size must be in 1..4"),
    ({"client_mode": "test"}, "client mode must be 'train' or 'eval'"),
    ({"reduction": "max"}, "unknown reduction"),
])
def test_bad_update_requests(unet, batch, kwargs, match):
    with pytest.raises(SegauditError, match=match):
        client_update(unet, batch, **kwargs)


def test_a_protocol_object_and_its_keyword_spelling_give_the_same_update(unet, batch):
    protocol = ClientProtocol("fedavg", local_steps=3, lr=0.05, local_batch_size=2, client_mode="eval")
    assert ClientProtocol.of(mode="fedavg", local_steps=3, lr=0.05, local_batch_size=2, train_mode=False) == protocol
    by_object = client_update(unet, batch, protocol)
    by_keywords = client_update(unet, batch, mode="fedavg", local_steps=3, lr=0.05, local_batch_size=2,
                                train_mode=False)
    assert by_object.meta == by_keywords.meta
    assert by_object.meta.train_mode is False and by_object.meta.local_steps == 3 and by_object.meta.lr == 0.05
    for name, t in by_object.tensors.items():
        assert torch.equal(t, by_keywords.tensors[name]), name
    # keywords change the given protocol field by field; FedSGD records lr 0 and one step whatever was asked
    assert client_update(unet, batch, protocol, mode="fedsgd").meta.local_steps == 1


def test_extract_separates_the_protocol_from_other_options():
    protocol, rest = ClientProtocol.extract(ClientProtocol(loss="dice_ce"), {"mode": "fedavg", "train_mode": False,
                                                                            "steps": 50, "seed": 3})
    assert protocol == ClientProtocol("fedavg", "dice_ce", client_mode="eval") and rest == {"steps": 50, "seed": 3}
    assert protocol.record() == {"mode": "fedavg", "local_steps": 1, "lr": 0.01, "loss": "dice_ce",
                                 "train_mode": False}
    with pytest.raises(TypeError, match="unexpected keyword"):
        ClientProtocol.of(local_step=2)


def test_check_update_refuses_other_arch_and_nan(unet, batch):
    update = client_update(unet, batch.subset([0, 1]))
    check_update(unet, update)
    other = build_model("fpn", in_channels=1, classes=3)
    with pytest.raises(SegauditError, match="no tensor for parameter 'decoder"):
        check_update(other, update)
    head = build_model("unet", in_channels=1, classes=2)
    with pytest.raises(SegauditError, match=r"'segmentation_head.0.weight' has shape \(3, 16, 3, 3\)"):
        check_update(head, update)
    bad = dict(update.tensors)
    bad["encoder.layer2.0.conv1.weight"] = bad["encoder.layer2.0.conv1.weight"].clone()
    bad["encoder.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(SegauditError, match="'encoder.layer2.0.conv1.weight' contains NaN"):
        check_update(unet, ClientUpdate(bad, update.meta))


def test_batchnorm_single_value_gets_a_fix():
    model = build_model("deeplabv3plus", in_channels=1, classes=2)
    one = Batch(torch.randn(1, 1, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long), ("bg", "fg"))
    with pytest.raises(SegauditError, match="batch of at least 2, a larger image size, or eval mode"):
        client_update(model, one)
    assert client_update(model, one, train_mode=False).meta.train_mode is False
