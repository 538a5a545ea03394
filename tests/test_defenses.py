"""Defenses change the update exactly as documented; the adaptive attacker reads meta.defense."""
import math

import pytest
import torch

from segaudit import SegauditError
from segaudit.attacks import ATTACKS
from segaudit.attacks.adaptive import adapt_to_defense, noise_std
from segaudit.attacks.dropout import MaskState, forward_order
from segaudit.attacks.objectives import GradientMatcher, simulate_update
from segaudit.data import load_dataset, make_batch
from segaudit.defenses import DEFENSES, Clip, GaussianNoise, Quantize, TopKPrune, mask_sites, parse_defense
from segaudit.fl import client_update
from segaudit.models import build_model
from segaudit.types import ClientUpdate, Prior, UpdateMeta


@pytest.fixture(scope="module")
def case(tiny_unet):
    model = tiny_unet()
    batch = make_batch(load_dataset("nuclei"), [0, 1], size=32, fit="crop", seed=0)
    return model, batch, client_update(model, batch, train_mode=False)


def random_update(seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {"a": torch.randn(40, 30, generator=g), "b": torch.randn(7, generator=g),
               "c": torch.randn(3, 3, 5, generator=g)}
    return ClientUpdate(tensors, UpdateMeta("fedsgd", 1))


def test_none_is_identity_and_records_itself(case):
    model, batch, plain = case
    update = parse_defense("none").client_update(model, batch, train_mode=False)
    assert update.meta.defense == {"name": "none"}
    assert all(torch.equal(update.tensors[k], plain.tensors[k]) for k in plain.tensors)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 0.99])
def test_prune_keeps_exactly_k_largest_per_tensor(p):
    update = random_update()
    pruned = TopKPrune(p).apply(update)
    assert pruned.meta.defense == {"name": "prune", "p": p}
    for name, t in update.tensors.items():
        out = pruned.tensors[name]
        k = max(1, math.ceil((1 - p) * t.numel() - 1e-9))
        assert int((out != 0).sum()) == k
        kept = out != 0
        assert torch.equal(out[kept], t[kept])  # kept entries unchanged
        if k < t.numel():  # every kept magnitude is at least every dropped one
            assert t[kept].abs().min() >= t[~kept].abs().max()


def test_clip_bounds_global_norm_and_leaves_small_updates_alone():
    update = random_update()
    norm = update.norm()
    clipped = Clip(norm / 4).apply(update)
    assert clipped.norm() == pytest.approx(norm / 4, rel=1e-5)
    ratio = {k: float(clipped.tensors[k].norm() / update.tensors[k].norm()) for k in update.tensors}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-5)  # one global factor
    same = Clip(norm * 2).apply(update)
    assert all(torch.equal(same.tensors[k], update.tensors[k]) for k in update.tensors)
    assert same.meta.defense == {"name": "clip", "c": norm * 2}


def test_noise_std_is_sigma_times_global_norm():
    update = ClientUpdate({"w": torch.randn(200, 500, generator=torch.Generator().manual_seed(1))},
                          UpdateMeta("fedsgd", 1))
    sigma = 0.003
    noisy = GaussianNoise(sigma).apply(update, seed=7)
    residual = noisy.tensors["w"] - update.tensors["w"]
    assert float(residual.mean()) == pytest.approx(0.0, abs=3 * sigma * update.norm() / 300)
    assert float(residual.std()) == pytest.approx(sigma * update.norm(), rel=0.01)  # 1e5 samples: ~0.2 % error
    again = GaussianNoise(sigma).apply(update, seed=7)
    assert torch.equal(again.tensors["w"], noisy.tensors["w"])  # the seed fixes the noise
    assert noisy.meta.defense == {"name": "noise", "sigma": sigma}  # no seed: the server cannot subtract it


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_quant_has_at_most_2_to_the_bits_values_per_tensor(bits):
    update = random_update()
    quant = Quantize(bits).apply(update)
    for name, t in update.tensors.items():
        out = quant.tensors[name]
        assert out.unique().numel() <= 2 ** bits
        m = float(t.abs().max())
        assert float((out - t).abs().max()) <= m / (2 ** bits - 1) + 1e-6  # at most half a step off
    assert quant.meta.defense == {"name": "quant", "bits": bits}
    assert torch.equal(Quantize(1).apply(update).tensors["b"].abs().unique(), update.tensors["b"].abs().max().view(1))


def test_dropout_update_differs_and_the_exact_masks_reproduce_it(case):
    model, batch, plain = case
    update = parse_defense("dropout:p=0.5/where=decoder").client_update(model, batch, seed=3, train_mode=False)
    spec = update.meta.defense
    assert spec == {"name": "dropout", "p": 0.5, "where": "decoder", "seed": 3,
                    "sites": ["decoder.blocks.0", "decoder.blocks.1", "decoder.blocks.2"]}
    assert not torch.allclose(update.tensors["segmentation_head.0.weight"], plain.tensors["segmentation_head.0.weight"])
    # the attacker who knows the seed regenerates the masks and reproduces the update from the true batch
    prior = Prior.from_batch_shape(batch)
    state = MaskState(0.5, forward_order(model, spec["sites"], update, prior), seed=spec["seed"])
    state.active = True
    params = {n: p.detach() for n, p in model.named_parameters() if n in update.tensors}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    with mask_sites(model, spec["sites"], state.mask):
        sim = simulate_update(model, params, buffers, batch.images, batch.masks, update.meta, create_graph=False)
    assert all(torch.allclose(sim[k], update.tensors[k], atol=1e-6, rtol=1e-5) for k in update.tensors)


def test_dropout_masks_per_fedavg_step_are_reproduced(case):
    model, batch, _ = case
    update = parse_defense("dropout:0.3").client_update(model, batch, seed=5, mode="fedavg", local_steps=3,
                                                        lr=0.1, local_batch_size=1, train_mode=False)
    prior = Prior.from_batch_shape(batch)
    order = forward_order(model, ["decoder"], update, prior)
    assert [(s, c, tuple(shape)[0]) for s, c, shape in order] == [("decoder", i, 1) for i in range(3)]
    state = MaskState(0.3, order, seed=5)
    state.active = True
    params = {n: p.detach() for n, p in model.named_parameters() if n in update.tensors}
    with mask_sites(model, ["decoder"], state.mask):
        sim = simulate_update(model, params, dict(model.named_buffers()), batch.images, batch.masks, update.meta,
                              create_graph=False)
    assert all(torch.allclose(sim[k], update.tensors[k], atol=1e-6, rtol=1e-4) for k in update.tensors)


def test_localsteps_forces_fedavg(case):
    model, batch, _ = case
    update = parse_defense("localsteps:k=3/lr=0.05/minibatch=1").client_update(model, batch, train_mode=False)
    m = update.meta
    assert (m.mode, m.local_steps, m.lr, m.local_batch_size) == ("fedavg", 3, 0.05, 1)
    assert m.defense == {"name": "localsteps", "k": 3, "lr": 0.05, "minibatch": 1}
    reference = client_update(model, batch, mode="fedavg", local_steps=3, lr=0.05, local_batch_size=1, train_mode=False)
    assert all(torch.equal(update.tensors[k], reference.tensors[k]) for k in update.tensors)


@pytest.mark.parametrize("spec, match", [
    ("magic", "unknown defense 'magic'; available: "),
    ("clip:bound=1", "defense 'clip' has no parameter 'bound'; it takes: c"),
    ("prune:1.5", r"p must be a number in \[0, 1\), got 1.5"),
    ("prune:-0.1", r"p must be a number in \[0, 1\)"),
    ("quant:0", r"bits must be an integer in \[1, 16\], got 0"),
    ("quant:2.5", "bits must be an integer"),
    ("noise:-1", r"sigma must be a number in \[0, inf\), got -1"),
    ("clip:0", r"c must be a number in \(0, inf\)"),
    ("noise:1e-3x", "not a number"),
    ("dropout:where=middle", "where must be 'head' or 'decoder'"),
    ("localsteps:0", "k must be an integer"),
    ("noise:0.1/0.2", "write parameters as key=value"),
])
def test_parse_defense_errors(spec, match):
    with pytest.raises(SegauditError, match=match):
        parse_defense(spec)


def test_parse_defense_values():
    assert parse_defense(" prune:0.9 ") == TopKPrune(0.9)
    assert parse_defense("quant:bits=4") == Quantize(4)
    assert parse_defense("dropout:where=decoder").where == "decoder"
    assert {"none", "noise", "clip", "prune", "quant", "dropout", "localsteps"} <= set(DEFENSES.available())


def test_dropout_refuses_classification_models():
    model = build_model("lenet", in_channels=1, classes=3)
    from segaudit.types import Batch

    batch = Batch(torch.rand(1, 1, 32, 32), torch.tensor([1]), ("a", "b", "c"))
    with pytest.raises(SegauditError, match="needs an smp segmentation model"):
        parse_defense("dropout:0.5").client_update(model, batch)


def test_adaptive_objective_ignores_zeroed_entries():
    target = TopKPrune(0.8).apply(random_update(0)).tensors
    matcher = GradientMatcher(target, "layer_cosine", support_only=True)
    dummy = random_update(1).tensors
    changed = {k: torch.where(target[k] != 0, v, v + 100 * torch.randn_like(v)) for k, v in dummy.items()}
    assert float(matcher(dummy)) == pytest.approx(float(matcher(changed)), abs=1e-6)
    dense = GradientMatcher(target, "layer_cosine")
    assert float(dense(dummy)) != pytest.approx(float(dense(changed)))
    # a perfect match on the support is a zero loss, whatever the dummy holds elsewhere
    exact = {k: torch.where(target[k] != 0, target[k], torch.randn_like(v)) for k, v in dummy.items()}
    assert float(matcher(exact)) == pytest.approx(0.0, abs=1e-6)


def test_adaptation_follows_meta_defense():
    update = random_update()
    assert adapt_to_defense(TopKPrune(0.9).apply(update)).support_only
    assert adapt_to_defense(Quantize(2).apply(update)).support_only
    assert not adapt_to_defense(Clip(0.1).apply(update)).support_only
    assert adapt_to_defense(update).weights is None and adapt_to_defense(update).defense == "none"
    noisy = GaussianNoise(0.05).apply(update, seed=123)  # not the seed that drew the update
    d = sum(t.numel() for t in update.tensors.values())
    assert noise_std(noisy) == pytest.approx(0.05 * update.norm(), rel=0.1)  # estimated from the noisy norm
    weights = adapt_to_defense(noisy).weights
    assert set(weights) == set(update.tensors) and all(1e-3 <= w <= 1 for w in weights.values())
    assert d > 0


def test_seg_records_its_adaptation(case):
    model, batch, _ = case
    prior = Prior.from_batch_shape(batch)
    pruned = parse_defense("prune:0.9").client_update(model, batch, train_mode=False)
    rec = ATTACKS.create("seg", steps=2, seed=0).run(model, pruned, prior)
    assert rec.status == "ok" and rec.extras["adaptation"]["support_only"]
    naive = ATTACKS.create("seg", steps=2, seed=0, adaptive=False).run(model, pruned, prior)
    assert not naive.extras["adaptation"]["support_only"]


@pytest.mark.parametrize("kw", [{}, {"known_masks": True}])
def test_dropout_attack_contract_on_a_dropout_update(case, kw):
    """The attack contract of tests/attacks/test_attacks.py, on an update made with dropout."""
    model, batch, _ = case
    update = parse_defense("dropout:0.5").client_update(model, batch, seed=2, train_mode=False)
    prior = Prior.from_batch_shape(batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = ATTACKS.create("dropout", steps=3, restarts=2, seed=0, **kw).run(model, update, prior)
    assert rec.status == "ok" and rec.images.shape == batch.images.shape and torch.isfinite(rec.images).all()
    assert rec.masks.shape == batch.masks.shape and rec.masks.dtype == torch.long and len(rec.restart_losses) == 2
    assert rec.extras["dropout"]["p"] == 0.5 and rec.extras["dropout"]["known_masks"] == bool(kw)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())  # no hook left behind
    again = ATTACKS.create("dropout", steps=3, restarts=2, seed=0, **kw).run(model, update, prior)
    assert torch.equal(rec.images, again.images)


def test_dropout_attack_needs_the_seed_for_known_masks(case):
    model, batch, plain = case
    update = parse_defense("dropout:0.5").client_update(model, batch, train_mode=False)
    spec = {k: v for k, v in update.meta.defense.items() if k != "seed"}
    import dataclasses

    stripped = dataclasses.replace(update, meta=dataclasses.replace(update.meta, defense=spec))
    with pytest.raises(SegauditError, match="known_masks needs the client's dropout seed"):
        ATTACKS.create("dropout", steps=1, known_masks=True).run(model, stripped, Prior.from_batch_shape(batch))
    with pytest.raises(SegauditError, match="p must be in"):
        ATTACKS.create("dropout", p=1.0)
