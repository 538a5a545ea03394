"""The malicious-server worst case (trap block in front of the model) and masks for images the attacker holds:
known answers on tiny real U-Nets, the threat-model boundary, and refusals."""
import pytest
import torch

from segaudit import SegauditError
from segaudit.attacks import ATTACKS
from segaudit.attacks.imprint import ImprintAttack, TrappedModel, recover_imprinted, trap_model
from segaudit.attacks.knowledge import attacker_data
from segaudit.attacks.masks import masks_for, model_masks, solve_masks
from segaudit.attacks.runner import attack_batch
from segaudit.data import load_dataset, make_batch, split
from segaudit.fl import client_update
from segaudit.metrics import match_order, segmentation_scores
from segaudit.models import build_model
from segaudit.types import Prior


@pytest.fixture(scope="module")
def case():
    """A small U-Net, a held-out client batch of 8 nuclei crops (32 px) and the attacker's crops of other tiles.
    Its last decoder block keeps 16 channels as smp's default U-Net does: with 4, the masks are not determined."""
    torch.manual_seed(0)
    data = load_dataset("nuclei")
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[32, 16, 16])
    held = split(data, seed=0)[1]
    batch = make_batch(data, [held[i % len(held)] for i in range(8)], size=32, fit="crop", seed=3)
    knowledge = attacker_data(data, batch, 32, fit="crop", norm={}, seed=3)
    return model, batch, knowledge


@pytest.mark.parametrize("train_mode", [True, False])
def test_the_trap_gives_back_every_image_of_a_batch_of_8_exactly(case, train_mode):
    model, batch, knowledge = case
    trapped = trap_model(model, Prior.from_batch_shape(batch), knowledge.public.images, bins=128)
    update = client_update(trapped, batch, train_mode=train_mode)
    found = recover_imprinted(update, trapped.imprint).view(-1, *batch.images.shape[1:])
    assert len(found) == 8  # every sample alone in its bin (fixed seed)
    assert (found[match_order(found, batch.images)] - batch.images).abs().max() < 1e-4  # float32 rounding


def test_the_trap_gives_back_most_images_from_a_fedavg_delta(case):
    """FedAvg: the bins drift during the local steps; 6 of 8 come back within 0.05 (measured)."""
    model, batch, knowledge = case
    trapped = trap_model(model, Prior.from_batch_shape(batch), knowledge.public.images, bins=128)
    update = client_update(trapped, batch, mode="fedavg", local_steps=3, lr=0.01)
    found = recover_imprinted(update, trapped.imprint).view(-1, *batch.images.shape[1:])
    error = (found[match_order(found, batch.images)] - batch.images).abs().flatten(1).max(1).values
    assert len(found) == 8 and int((error < 0.05).sum()) >= 6


def test_imprint_attack_recovers_images_and_masks_and_says_its_threat(case):
    model, batch, knowledge = case
    out = attack_batch(model, batch, "imprint", train_mode=True, knowledge=knowledge, steps=100)
    assert out.settings["threat"] == "malicious server" == out.reconstruction.extras["threat"]
    assert out.metrics["psnr"] > 60 and out.metrics["ssim"] > 0.99
    assert out.metrics["mask_dice"] > 0.95 and out.reconstruction.extras["mask_source"] == "least squares"
    assert out.identification["identification_rate"] == 1.0


def test_honest_attacks_send_the_model_unchanged(case):
    model, batch, knowledge = case
    prior = Prior.from_batch_shape(batch)
    for name in ATTACKS.available():
        attack = ATTACKS.create(name)
        sent = attack.send(model, prior, knowledge.public.images)
        assert (sent is model) == (attack.threat == "honest-but-curious server")
    assert ATTACKS.get("seg").threat == "honest-but-curious server"  # the default attack never traps
    assert isinstance(ImprintAttack().send(model, prior, knowledge.public.images), TrappedModel)


def test_masks_solve_exactly_for_known_images(case):
    """With the images known, the cross-entropy gradient is linear in the mask: least squares gives it back."""
    model, batch, _ = case
    two = batch.subset([0, 1])
    for train_mode in (False, True):
        update = client_update(model, two, train_mode=train_mode)
        masks, extras = masks_for(model, update, Prior.from_batch_shape(two), two.images, iterations=100)
        assert segmentation_scores(masks, two.masks, 2)["dice"] > 0.99  # measured 0.995-0.997
        assert extras["mask_source"] == "least squares"  # the untrained model's own guess matches worse


def test_the_model_segments_the_truth_as_its_eval_forward_does(case):
    model, batch, _ = case
    model.train()
    expected = model.eval()(batch.images).argmax(1)
    model.train()
    assert torch.equal(model_masks(model, batch.images), expected) and model.training  # mode restored


def test_imprint_refusals(case):
    model, batch, knowledge = case
    prior = Prior.from_batch_shape(batch)
    with pytest.raises(SegauditError, match="at least 2 bins"):
        trap_model(model, prior, knowledge.public.images, bins=1)
    with pytest.raises(SegauditError, match="quantiles of public images"):
        trap_model(model, prior, None)
    with pytest.raises(SegauditError, match="has no restarts"):
        ImprintAttack(restarts=2)
    with pytest.raises(SegauditError, match="model without one"):  # an honest update cannot be read as a trap
        ImprintAttack().run(model, client_update(model, batch), prior)
    update = client_update(model, batch.subset([0, 1]), loss="dice_ce")
    with pytest.raises(SegauditError, match="only for the 'ce' loss"):
        solve_masks(model, update, batch.images[:2])


def test_an_update_with_nothing_in_the_trap_gives_the_baseline_guess(case):
    model, batch, knowledge = case
    attack = ImprintAttack(steps=5)
    trapped = attack.send(model, Prior.from_batch_shape(batch), knowledge.public.images)
    update = client_update(trapped, batch)
    empty = type(update)({**update.tensors, "imprint.weight": torch.zeros_like(update.tensors["imprint.weight"]),
                          "imprint.bias": torch.zeros_like(update.tensors["imprint.bias"])}, update.meta)
    rec = attack.run(trapped, empty, Prior.from_batch_shape(batch))
    assert rec.extras["recovered_bins"] == 0 and "mask_source" not in rec.extras
    assert torch.equal(rec.images, torch.zeros_like(rec.images))  # the middle of the [-1, 1] box
    assert rec.masks.shape == batch.masks.shape and rec.masks.unique().numel() == 1  # one class: the composition's
