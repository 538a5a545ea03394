"""Attack contracts (every registered attack), known answers and refusals."""
import inspect

import pytest
import torch

from segaudit import SegauditError
from segaudit.attacks import ATTACKS, Attack
from segaudit.attacks.inversion import DLG
from segaudit.attacks.recovery import (
    counts_from_shares,
    estimate_composition,
    head_bias,
    head_bias_name,
    recover_labels,
)
from segaudit.data import load_dataset, make_batch
from segaudit.fl import client_update
from segaudit.metrics import score
from segaudit.models import build_model
from segaudit.types import Batch, ClientUpdate, Prior


@pytest.fixture(scope="module")
def seg_case():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    batch = make_batch(load_dataset("nuclei"), [0], size=32, fit="crop", seed=0)
    update = client_update(model, batch, train_mode=False)
    return model, batch, update, Prior.from_batch_shape(batch)


@pytest.mark.parametrize("name", ATTACKS.available())
def test_contract_every_attack(name, seg_case):
    model, batch, update, prior = seg_case
    restarts = 1 if name == "imprint" else 2  # the malicious server's recovery is closed-form
    attack = ATTACKS.create(name, steps=2, restarts=restarts, seed=0)
    public = make_batch(load_dataset("nuclei"), [5, 6, 7], size=32, fit="crop", seed=1).images
    sent = attack.send(model, prior, public)
    if sent is not model:
        update = client_update(sent, batch, train_mode=False)
    before = {k: v.clone() for k, v in sent.state_dict().items()}
    rec = attack.run(sent, update, prior)
    assert rec.status == "ok" and rec.images.shape == batch.images.shape and torch.isfinite(rec.images).all()
    assert rec.masks.shape == batch.masks.shape and rec.masks.dtype == torch.long
    assert int(rec.masks.max()) < prior.num_classes and len(rec.restart_losses) == restarts
    assert all(torch.equal(v, sent.state_dict()[k]) for k, v in before.items())  # the model is untouched
    again = ATTACKS.create(name, steps=2, restarts=restarts, seed=0).run(sent, update, prior)
    assert torch.equal(rec.images, again.images)  # same seed, same result on CPU


def test_attacks_never_receive_the_batch():
    params = list(inspect.signature(Attack.run).parameters)
    assert params == ["self", "model", "update", "prior"]


def test_dlg_lenet_known_answer():
    """DLG on sigmoid LeNet, 32 px, batch 1: MSE < 1e-3 within 300 L-BFGS steps (fixed seed)."""
    torch.manual_seed(0)
    model = build_model("lenet", in_channels=1, classes=4)
    crop = make_batch(load_dataset("nuclei"), [3], size=32, fit="crop", seed=1)
    batch = Batch(crop.images, torch.tensor([2]), ("a", "b", "c", "d"), mean=crop.mean, std=crop.std)
    update = client_update(model, batch)
    rec = DLG(steps=300, seed=0).run(model, update, Prior.from_batch_shape(batch))
    metrics = score(rec, batch)
    assert metrics["mse"] < 1e-3 and metrics["label_acc"] == 1.0


def test_idlg_and_count_labels():
    torch.manual_seed(0)
    model = build_model("lenet", in_channels=1, classes=5)
    x = torch.rand(1, 1, 32, 32)
    for label in range(5):
        update = client_update(model, Batch(x, torch.tensor([label]), tuple("abcde")))
        assert recover_labels(model, update, Prior((1, 32, 32), 1, 5, "classification")).tolist() == [label]
    assert counts_from_shares(torch.tensor([0.5, 0.26, 0.24]), 4).tolist() == [2, 1, 1]


def test_composition_exact_when_softmax_is_known():
    """A head with zero weights outputs softmax(bias) everywhere: the composition is then exact."""
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=3, encoder_depth=3, decoder_channels=[16, 8, 4])
    with torch.no_grad():
        model.segmentation_head[0].weight.zero_()
        model.segmentation_head[0].bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, :8] = 1
    masks[1, :, :4] = 2
    batch = Batch(torch.randn(2, 1, 32, 32), masks, ("a", "b", "c"))
    truth = torch.bincount(masks.flatten(), minlength=3).double() / masks.numel()
    for kw in (dict(), dict(reduction="sum"), dict(mode="fedavg", lr=0.1, local_steps=1)):
        update = client_update(model, batch, **kw)
        comp = estimate_composition(model, update, Prior((1, 32, 32), 2, 3))
        torch.testing.assert_close(comp.double(), truth, atol=1e-5, rtol=0)  # float32 sums


def test_refuses_update_of_another_arch(seg_case):
    model, batch, update, prior = seg_case
    other = build_model("unet", in_channels=1, classes=3, encoder_depth=3, decoder_channels=[16, 8, 4])
    with pytest.raises(SegauditError, match="'segmentation_head.0.weight' has shape"):
        ATTACKS.create("ig", steps=1).run(other, update, prior)


def test_refuses_nan_update_naming_layer(seg_case):
    model, batch, update, prior = seg_case
    tensors = dict(update.tensors)
    name = "decoder.blocks.0.conv1.0.weight"
    tensors[name] = torch.full_like(tensors[name], float("inf"))
    with pytest.raises(SegauditError, match="'decoder.blocks.0.conv1.0.weight' contains NaN or Inf"):
        ATTACKS.create("dlg", steps=1).run(model, ClientUpdate(tensors, update.meta), prior)


def test_prior_must_match_update(seg_case):
    model, batch, update, prior = seg_case
    with pytest.raises(SegauditError, match="the prior says 3 images but the update was made from 1"):
        ATTACKS.create("dlg", steps=1).run(model, update, Prior(prior.image_shape, 3, 2))


def test_restarts_that_go_nan_are_abandoned(seg_case):
    model, batch, update, prior = seg_case

    class Exploding(DLG):
        def run_restarts(self, loss, prior, gens, extras):
            return super().run_restarts(lambda x, y: loss(x, y) * float("nan"), prior, gens, extras)

    rec = Exploding(steps=2, restarts=2).run(model, update, prior)
    assert rec.status == "no valid reconstruction" and rec.images is None
    assert all(s.startswith("abandoned: matching loss became nan") for s in rec.restart_status)
    assert all(v is None for v in score(rec, batch).values())


def test_batchnorm_statistics_recovered_exactly():
    from segaudit.attacks.priors import client_batch_stats

    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    x = torch.randn(2, 1, 32, 32)
    update = client_update(model, Batch(x, torch.zeros(2, 32, 32, dtype=torch.long), ("a", "b")))
    stats = client_batch_stats(model, update)
    conv1 = model.encoder.conv1(x).detach()
    torch.testing.assert_close(stats["encoder.bn1"][0], conv1.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats["encoder.bn1"][1], conv1.var((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert client_batch_stats(model, client_update(model, Batch(x, torch.zeros(2, 32, 32, dtype=torch.long),
                                                                ("a", "b")), train_mode=False)) == {}


def test_batchnorm_statistics_of_k_local_steps_are_their_weighted_mean():
    """FedAvg, K = 3 steps on the batch: the recovered statistic is the momentum-weighted mean of the K steps'."""
    import copy

    from segaudit.attacks.priors import client_batch_stats

    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))
    update = client_update(model, Batch(x, y, ("a", "b")), mode="fedavg", local_steps=3, lr=0.05)
    stats = client_batch_stats(model, update)
    client, seen = copy.deepcopy(model).train(), []
    client.encoder.bn1.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].mean((0, 2, 3)).detach(),
                                                                                 inp[0].var((0, 2, 3)).detach())))
    opt = torch.optim.SGD(client.parameters(), lr=0.05)
    for _ in range(3):  # the client's own steps, replayed
        opt.zero_grad()
        torch.nn.functional.cross_entropy(client(x), y).backward()
        opt.step()
    m = model.encoder.bn1.momentum
    w = torch.tensor([m * (1 - m) ** (3 - k) for k in (1, 2, 3)])
    w = w / w.sum()
    assert not torch.allclose(seen[0][0], seen[2][0])  # the weights moved: three different statistics
    for i in (0, 1):
        torch.testing.assert_close(stats["encoder.bn1"][i], sum(wk * s[i] for wk, s in zip(w, seen)),
                                   atol=1e-5, rtol=1e-4)


def test_seg_known_answer_unet_eval_mode():
    """The segmentation attack rebuilds a held-out nuclei crop and its mask from an untrained U-Net's
    FedSGD gradient (client in eval mode). These crops are dim: a flat image at the true mean already
    scores 23 dB PSNR / 0.43 SSIM here, so the test asks for what a flat image cannot give — a reconstruction
    correlated with the truth and a mask that overlaps the nuclei. The single-image loss is measured at
    26.5 dB / mask Dice 0.944 here (24.5 dB / 0.856 with ``layer_cosine``)."""
    from segaudit.attacks.runner import attack_batch
    from segaudit.data import split

    torch.manual_seed(0)
    data = load_dataset("nuclei")
    batch = make_batch(data, [split(data, seed=0)[1][0]], size=64, fit="crop", seed=0)
    model = build_model("unet", in_channels=1, classes=2)
    out = attack_batch(model, batch, "seg", train_mode=False, steps=200, seed=0)
    corr = torch.corrcoef(torch.stack([out.reconstruction.images.flatten(), batch.images.flatten()]))[0, 1]
    assert out.reconstruction.extras["objective"] == "layer_log_cosine"
    assert out.reconstruction.extras["relu_curvature"] == 0.05
    assert corr > 0.5 and out.metrics["psnr"] > 25.5 and out.metrics["mask_dice"] > 0.9


@pytest.mark.parametrize("kw", [dict(mode="fedavg", local_steps=2, lr=0.01), dict(train_mode=True)])
def test_seg_runs_on_fedavg_deltas_and_train_mode_updates(seg_case, kw):
    model, batch, _, prior = seg_case
    two = make_batch(load_dataset("nuclei"), [0, 1], size=32, fit="crop", seed=0)  # BatchNorm needs 2 in train mode
    update = client_update(model, two, **kw)
    rec = ATTACKS.create("seg", steps=3).run(model, update, Prior.from_batch_shape(two))
    assert rec.status == "ok" and rec.images.shape == two.images.shape and len(rec.history) == 4


def test_composition_uses_public_images_when_the_attacker_has_them(seg_case):
    model, batch, update, prior = seg_case
    public = make_batch(load_dataset("nuclei"), [4, 5], size=32, fit="crop", seed=3).images
    with_public = estimate_composition(model, update, Prior.from_batch_shape(batch, public_images=public))
    explicit = estimate_composition(model, update, prior, reference=public)
    assert torch.equal(with_public, explicit)
    assert not torch.equal(with_public, estimate_composition(model, update, prior))


def test_median_restart_aligns_each_batch_and_skips_failed_restarts():
    from segaudit.attacks.base import RestartResult, median_restart

    torch.manual_seed(0)
    images = torch.randn(3, 1, 4, 4)
    probs = torch.rand(3, 2, 4, 4).softmax(1)
    perm = torch.tensor([2, 0, 1])  # a restart's batch comes back in any order
    restarts = [RestartResult(images + 0.1, probs, [1.0]),
                RestartResult(images[perm] - 0.1, probs[perm], [2.0]),
                RestartResult(images[perm], probs[perm], [3.0]),
                RestartResult(torch.full_like(images, 9.0), probs, [float("nan")], "abandoned: nan")]
    rec = median_restart(restarts, "segmentation")
    torch.testing.assert_close(rec.images, images)  # median of +0.1, -0.1 and 0 per pixel
    assert torch.equal(rec.masks, probs.argmax(1)) and rec.history == [1.0]
    assert rec.restart_losses[:3] == [1.0, 2.0, 3.0]
    alone = median_restart([restarts[1], restarts[3]], "segmentation")
    assert torch.equal(alone.images, images[perm] - 0.1)  # one finished restart: itself


def test_refuses_unknown_combine():
    with pytest.raises(SegauditError, match="unknown combine 'mean'; use one of best, median"):
        ATTACKS.create("seg", combine="mean")


@pytest.mark.parametrize("arch, encoder", [("unet", "resnet18"), ("deeplabv3plus", "resnet18"), ("fpn", "resnet18"),
                                           ("segformer", None), ("lenet", None), ("resnet18", None)])
def test_the_head_bias_is_the_output_layers_bias_of_one_entry_per_class(arch, encoder):
    model = build_model(arch, encoder=encoder, in_channels=1, classes=3)
    name = head_bias(model, 3)
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert name == head_bias(model) == biases[-1], arch  # the last bias of the network is the head's
    assert dict(model.named_parameters())[name].shape == (3,)
    assert head_bias(model, 4) is None


def test_a_head_without_a_bias_of_one_entry_per_class_is_refused_by_analytic_recovery():
    model = build_model("unet", encoder="resnet18", in_channels=1, classes=3)
    update = client_update(model, Batch(torch.randn(1, 1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long),
                                        ("a", "b", "c")), train_mode=False)
    assert head_bias_name(model, update, 3) == "segmentation_head.0.bias"
    frozen = ClientUpdate({k: v for k, v in update.tensors.items() if k != "segmentation_head.0.bias"}, update.meta)
    with pytest.raises(SegauditError, match="no bias of one entry per class"):
        head_bias_name(model, frozen, 3)
