"""Property tests (hypothesis) over shapes, class counts and batch sizes: the data pipeline, the client-update
simulation and the metrics. Few examples, derandomized and without a database: fast and the same on every run."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segaudit import data as sd
from segaudit.attacks.objectives import simulate_update
from segaudit.data import Dataset, make_batch, patches, split
from segaudit.errors import SegauditError
from segaudit.fl import client_update, trainable_params
from segaudit.metrics import class_scores, denormalize, match_order, score
from segaudit.models import build_model
from segaudit.types import Batch, Reconstruction

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


def random_dataset(rng, n, h, w, c, k, foreground=True) -> Dataset:
    masks = [rng.integers(0, k, (h, w)) for _ in range(n)]
    if foreground:
        for m in masks:
            m[rng.integers(h), rng.integers(w)] = k - 1  # at least one foreground pixel
    images = [rng.random((h, w, c), dtype=np.float32) for _ in range(n)]
    return Dataset(images, masks, tuple(f"s{i}" for i in range(n)), k)


# -- data pipeline ------------------------------------------------------------------------------------------------


@FAST
@given(h=st.integers(1, 40), w=st.integers(1, 40), k=st.integers(3, 256),
       dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32]), colour=st.booleans(), seed=seeds)
def test_mask_conversion_keeps_class_indices_and_checks_the_class_count(h, w, k, dtype, colour, seed):
    labels = np.random.default_rng(seed).integers(0, k, (h, w))
    labels[0, 0] = k - 1
    raw = labels.astype(dtype)
    if colour:  # a greyscale mask saved as RGB: equal channels
        raw = np.repeat(raw[..., None], 3, axis=-1)
    out = sd.mask_to_labels(raw, "m.png")
    assert out.dtype == np.int64 and out.shape == (h, w) and np.array_equal(out, labels)
    assert np.array_equal(Dataset([np.zeros((h, w), np.float32)], [out], ("a",), k)[0][1], labels)
    with pytest.raises(SegauditError, match=rf"outside 0\.\.{k - 2} \({k - 1} classes\)"):
        Dataset([np.zeros((h, w), np.float32)], [out], ("a",), k - 1)


@FAST
@given(h=st.integers(1, 30), w=st.integers(1, 30), c=st.sampled_from([1, 2, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]), seed=seeds)
def test_image_conversion_gives_unit_range_and_one_or_three_channels(h, w, c, dtype, seed):
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0, np.float64: 50.0}[dtype]
    raw = (np.random.default_rng(seed).random((h, w, c)) * top).astype(dtype)
    out = sd.image_to_unit(raw[..., 0] if c == 1 else raw, "i.png")
    assert out.dtype == np.float32 and out.shape == (h, w, {1: 1, 2: 1, 3: 3, 4: 3}[c])  # alpha dropped
    assert 0.0 <= out.min() and out.max() <= 1.0
    if dtype in (np.uint8, np.float32):  # 8-bit divided by 255; floats already in [0, 1] kept
        scale = 255 if dtype == np.uint8 else 1
        np.testing.assert_array_equal(out, raw[..., : out.shape[-1]].astype(np.float32) / scale)


@FAST
@given(h=st.integers(1, 32), w=st.integers(1, 32), k=st.integers(2, 5), c=st.sampled_from([1, 3]), seed=seeds)
def test_center_fit_pads_without_changing_content(h, w, k, c, seed):
    """Images no larger than the output: 'center' only pads (zeros, class 0), so content sums are unchanged."""
    ds = random_dataset(np.random.default_rng(seed), 1, h, w, c, k)
    batch = make_batch(ds, [0], size=32, stride=8, fit="center", normalize=False)
    image, mask = ds[0]
    assert batch.images.shape == (1, c, 32, 32)
    assert float(batch.images.sum()) == pytest.approx(float(image.sum()), rel=1e-5, abs=1e-4)
    for cls in range(1, k):
        assert int((batch.masks == cls).sum()) == int((mask == cls).sum())


@FAST
@given(n=st.integers(1, 3), h=st.integers(16, 48), w=st.integers(16, 48), k=st.integers(2, 4), seed=seeds)
def test_crops_are_exact_windows_named_by_their_corner(n, h, w, k, seed):
    ds = random_dataset(np.random.default_rng(seed), n, h, w, 1, k)
    batch = make_batch(ds, list(range(n)), size=16, stride=8, fit="crop", seed=seed % 1000, normalize=False)
    for i, name in enumerate(batch.names):
        stem, corner = name.split("@y")
        y, x = (int(v) for v in corner.split("x"))
        image, mask = ds[ds.names.index(stem)]
        np.testing.assert_array_equal(batch.images[i, 0].numpy(), image[y:y + 16, x:x + 16, 0])
        np.testing.assert_array_equal(batch.masks[i].numpy(), mask[y:y + 16, x:x + 16])


@FAST
@given(n=st.integers(1, 4), count=st.integers(1, 9), h=st.integers(16, 40), w=st.integers(16, 40),
       k=st.integers(2, 4), seed=seeds)
def test_patches_are_deterministic_sized_and_hold_foreground(n, count, h, w, k, seed):
    ds = random_dataset(np.random.default_rng(seed), n, h, w, 1, k)
    batch = patches(ds, size=16, count=count, stride=8, seed=seed)
    assert batch.images.shape == (count, 1, 16, 16) and batch.masks.shape == (count, 16, 16)
    assert batch.names == patches(ds, size=16, count=count, stride=8, seed=seed).names
    stems = [name.split("@")[0] for name in batch.names]
    assert set(stems) <= set(ds.names) and len(set(stems)) == min(n, count)  # no repeat while images last
    assert all(int((m > 0).sum()) > 0 for m in batch.masks)  # foreground=1 and every image has some


@FAST
@given(n=st.integers(2, 50), holdout=st.floats(0.05, 0.95), seed=seeds)
def test_split_of_a_dataset_is_the_split_of_its_length(n, holdout, seed):
    ds = random_dataset(np.random.default_rng(seed), n, 4, 4, 1, 2)
    assert split(ds, holdout=holdout, seed=seed) == split(n, holdout=holdout, seed=seed)


# -- update simulation --------------------------------------------------------------------------------------------

_MODELS: dict[tuple[int, int], torch.nn.Module] = {}


def tiny_double(classes: int, channels: int = 1) -> torch.nn.Module:
    """A small U-Net (3 encoder stages) in float64, built once per (classes, channels)."""
    if (classes, channels) not in _MODELS:
        torch.manual_seed(classes)
        _MODELS[classes, channels] = build_model("unet", in_channels=channels, classes=classes, encoder_depth=3,
                                                 decoder_channels=[16, 8, 4]).double()
    return _MODELS[classes, channels]


def random_batch(n, c, size, k, seed) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, c, size, size, generator=g, dtype=torch.float64),
                 torch.randint(0, k, (n, size, size), generator=g), tuple(f"c{i}" for i in range(k)))


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


configs = st.fixed_dictionaries({
    "n": st.integers(1, 3), "k": st.integers(2, 3), "c": st.sampled_from([1, 3]), "size": st.sampled_from([16, 24]),
    "mode": st.sampled_from(["fedsgd", "fedavg"]), "loss": st.sampled_from(["ce", "dice_ce"]),
    "reduction": st.sampled_from(["mean", "sum"]), "steps": st.integers(1, 3), "train": st.booleans(),
    "lbs": st.integers(1, 3), "lr": st.sampled_from([0.01, 0.1]), "seed": seeds})


@FAST
@given(cfg=configs)
def test_attacker_simulation_equals_the_client_and_leaves_the_model_alone(cfg):
    model = tiny_double(cfg["k"], cfg["c"])
    n = cfg["n"]
    batch = random_batch(n, cfg["c"], cfg["size"], cfg["k"], cfg["seed"])
    before, modes = state(model), [m.training for m in model.modules()]
    update = client_update(model, batch, mode=cfg["mode"], loss=cfg["loss"], reduction=cfg["reduction"],
                           local_steps=cfg["steps"], lr=cfg["lr"], local_batch_size=min(cfg["lbs"], n),
                           train_mode=cfg["train"])
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before) and modes == [m.training for m in model.modules()]
    params = {name: p.detach() for name, p in trainable_params(model).items()}
    soft = F.one_hot(batch.masks, cfg["k"]).movedim(-1, 1).double()
    sim = simulate_update(model, params, dict(model.named_buffers()), batch.images, soft, update.meta,
                          create_graph=False)
    assert list(sim) == list(update.tensors)
    for name, t in update.tensors.items():
        assert sim[name].shape == t.shape == params[name].shape
        torch.testing.assert_close(sim[name], t, rtol=1e-6, atol=1e-10)


@FAST
@given(n=st.integers(1, 3), k=st.integers(2, 3), lr=st.floats(1e-3, 1.0), seed=seeds)
def test_one_full_batch_fedavg_step_is_minus_lr_times_the_fedsgd_gradient(n, k, lr, seed):
    model, batch = tiny_double(k), random_batch(n, 1, 16, k, seed)
    grads = client_update(model, batch, mode="fedsgd", train_mode=False).tensors
    delta = client_update(model, batch, mode="fedavg", local_steps=1, lr=lr, train_mode=False).tensors
    for name, g in grads.items():
        torch.testing.assert_close(delta[name], -lr * g, rtol=1e-6, atol=1e-12)


@FAST
@given(n=st.integers(2, 4), k=st.integers(2, 3), seed=seeds)
def test_mean_loss_gradient_is_the_mean_of_per_sample_gradients(n, k, seed):
    """Eval mode (BatchNorm on running statistics): samples are independent and the mean CE is linear in them."""
    model, batch = tiny_double(k), random_batch(n, 1, 16, k, seed)
    whole = client_update(model, batch, train_mode=False).tensors
    singles = [client_update(model, batch.subset([i]), train_mode=False).tensors for i in range(n)]
    for name, g in whole.items():
        torch.testing.assert_close(g, sum(s[name] for s in singles) / n, rtol=1e-6, atol=1e-12)


# -- metrics ------------------------------------------------------------------------------------------------------

shapes = st.fixed_dictionaries({"n": st.integers(1, 4), "c": st.sampled_from([1, 3]), "h": st.integers(7, 24),
                                "w": st.integers(7, 24), "k": st.integers(2, 5), "seed": seeds})


def truth(s) -> Batch:
    g = torch.Generator().manual_seed(s["seed"])
    images = torch.rand(s["n"], s["c"], s["h"], s["w"], generator=g) * 2 - 1  # mean 0.5, std 0.5 normalised
    masks = torch.randint(0, s["k"], (s["n"], s["h"], s["w"]), generator=g)
    return Batch(images, masks, tuple(f"c{i}" for i in range(s["k"])), mean=(0.5,) * s["c"], std=(0.5,) * s["c"])


@FAST
@given(s=shapes)
def test_a_perfect_reconstruction_scores_perfectly(s):
    batch = truth(s)
    out = score(Reconstruction(batch.images.clone(), batch.masks.clone()), batch)
    assert out["mse"] == 0 and out["psnr"] == float("inf") and out["ssim"] == pytest.approx(1.0)
    assert out["mask_dice"] == 1.0 and out["mask_iou"] == 1.0 and out["label_acc"] is None


@FAST
@given(s=shapes, noise=st.floats(0.0, 0.05))
def test_scores_ignore_the_order_of_the_reconstructions(s, noise):
    batch = truth(s)
    g = torch.Generator().manual_seed(s["seed"] + 1)
    images = batch.images + noise * torch.randn(batch.images.shape, generator=g)
    masks = torch.randint(0, s["k"], batch.masks.shape, generator=g)
    perm = torch.randperm(s["n"], generator=g)
    plain = score(Reconstruction(images, masks), batch)
    shuffled = score(Reconstruction(images[perm], masks[perm]), batch)
    assert shuffled.pop("label_acc") is plain.pop("label_acc") is None
    assert shuffled == pytest.approx(plain, rel=1e-9, abs=1e-12)


@FAST
@given(s=shapes)
def test_scores_stay_in_their_bounds(s):
    batch = truth(s)
    g = torch.Generator().manual_seed(s["seed"] + 2)
    rec = Reconstruction(torch.randn(batch.images.shape, generator=g) * 3,
                         torch.randint(0, s["k"], batch.masks.shape, generator=g))
    out = score(rec, batch)
    assert 0 <= out["mse"] <= 1 and out["psnr"] >= 0 and -1 <= out["ssim"] <= 1
    assert 0 <= out["mask_iou"] <= out["mask_dice"] <= 1


@FAST
@given(s=shapes)
def test_class_scores_are_symmetric_and_follow_a_relabelling(s):
    batch = truth(s)
    g = torch.Generator().manual_seed(s["seed"] + 3)
    pred = torch.randint(0, s["k"], batch.masks.shape, generator=g)
    dice, iou = class_scores(pred, batch.masks, s["k"])
    dice_t, iou_t = class_scores(batch.masks, pred, s["k"])
    np.testing.assert_array_equal(dice, dice_t)
    np.testing.assert_array_equal(iou, iou_t)
    np.testing.assert_allclose(iou, dice / (2 - dice))  # IoU = Dice / (2 - Dice), class by class
    relabel = torch.randperm(s["k"], generator=g)
    dice_r, _ = class_scores(relabel[pred], relabel[batch.masks], s["k"])
    np.testing.assert_array_equal(dice_r[relabel.numpy()], dice)


@FAST
@given(n=st.integers(1, 6), dup=st.booleans(), seed=seeds)
def test_matching_is_one_to_one_even_with_duplicates(n, dup, seed):
    g = torch.Generator().manual_seed(seed)
    true = torch.rand(n, 1, 5, 5, generator=g)
    rec = true[torch.zeros(n, dtype=torch.long)] if dup else torch.rand(n, 1, 5, 5, generator=g)
    assert sorted(match_order(rec, true).tolist()) == list(range(n))


@FAST
@given(c=st.integers(1, 4), seed=seeds)
def test_denormalize_inverts_the_normalisation(c, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, c, 6, 6, generator=g, dtype=torch.float64)
    mean, std = torch.rand(c, generator=g).tolist(), (torch.rand(c, generator=g) + 0.1).tolist()
    normalised = (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)
    torch.testing.assert_close(denormalize(normalised, mean, std), x)
