"""The statistics inversion: images from the BatchNorm statistics a train-mode client's buffers reveal."""
import copy

import pytest
import torch

from segaudit.attacks import ATTACKS
from segaudit.attacks.priors import BatchNormPrior, client_batch_stats
from segaudit.attacks.statistics import invert_statistics
from segaudit.data import load_dataset, make_batch
from segaudit.fl import client_update
from segaudit.metrics import score
from segaudit.types import Prior, Reconstruction


@pytest.fixture(scope="module")
def case(tiny_unet):
    model = tiny_unet()
    batch = make_batch(load_dataset("nuclei"), [0, 1], size=32, fit="crop", seed=0)
    return model, batch, client_update(model, batch)  # train mode, buffers shared: the defaults


def test_the_true_batch_has_distance_zero(case):
    model, batch, update = case
    model = copy.deepcopy(model)  # train-mode forwards move the running statistics
    stats = BatchNormPrior(model, client_batch_stats(model, update))
    model.train()
    model(batch.images)
    assert float(stats.distance().detach()) < 1e-9
    model(torch.rand_like(batch.images))
    assert float(stats.distance().detach()) > 1e-2
    stats.remove()


def test_statistics_alone_recover_the_images(case):
    """Measured: 28.7 dB against the flat baseline's 18.8 dB (batch of 2, 32 px, 300 steps)."""
    model, batch, update = case
    before = copy.deepcopy(model.state_dict())
    model.eval()
    stats = BatchNormPrior(model, client_batch_stats(model, update))
    x, history = invert_statistics(model, stats, Prior.from_batch_shape(batch), torch.Generator().manual_seed(0), 300)
    stats.remove()
    scores = score(Reconstruction(x, batch.masks), batch)
    assert scores["psnr"] > scores["baseline_psnr"] + 6 and scores["psnr"] > 25
    assert history[-1] < history[0] / 100
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_seg_matches_statistics_only_where_the_buffers_reveal_them(case):
    model, batch, update = case
    prior = Prior.from_batch_shape(batch)
    seg = ATTACKS.create("seg", steps=2, statistics_steps=20)
    assert seg.run(model, update, prior).extras["images_from"].startswith("BatchNorm statistics (20 steps")
    hidden = client_update(model, batch, share_buffers=False)
    assert "images_from" not in seg.run(model, hidden, prior).extras
    eval_mode = client_update(model, batch, train_mode=False)
    assert "images_from" not in seg.run(model, eval_mode, prior).extras
    off = ATTACKS.create("seg", steps=2, statistics_steps=0)
    assert "images_from" not in off.run(model, update, prior).extras


def test_seg_defaults_to_fifteen_statistics_steps_per_matching_step(case):
    model, batch, update = case
    rec = ATTACKS.create("seg", steps=2).run(model, update, Prior.from_batch_shape(batch))
    assert rec.extras["images_from"].startswith("BatchNorm statistics (30 steps")
    assert len(rec.extras["statistics_distance"]) == 1


def test_restarts_keep_the_one_whose_statistics_match_best(case):
    model, batch, update = case
    prior = Prior.from_batch_shape(batch)
    rec = ATTACKS.create("seg", steps=2, statistics_steps=40, restarts=3).run(model, update, prior)
    distances = rec.extras["statistics_distance"]
    assert len(distances) == 3 and len(set(distances)) == 3  # each start went its own way
    assert rec.extras["combine"] == "lowest statistics distance" and len(rec.restart_losses) == 3
    stats = BatchNormPrior(model, client_batch_stats(model, update))
    best, _ = invert_statistics(model, stats, prior, torch.Generator().manual_seed(distances.index(min(distances))), 40)
    stats.remove()
    assert torch.allclose(rec.images, best, atol=1e-6)
