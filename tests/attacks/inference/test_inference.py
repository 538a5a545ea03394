"""Inference attacks: composition (known answer), property and membership, AUC, contract, bad inputs, CLI,
streaming (bounded live updates, same result as a materialised list)."""
import copy
import dataclasses
import inspect
import json
import weakref

import numpy as np
import pytest
import torch

from segaudit.attacks.inference import (
    INFERENCE,
    Case,
    CompositionAttack,
    PropertySpec,
    crop_pool,
    roc_scores,
    run_inference,
    simulate,
    stream,
)
from segaudit.cli import main
from segaudit.defenses import Defense
from segaudit.errors import SegauditError

CLASSES = ("background", "nucleus")


def test_composition_is_exact_when_the_softmax_is_known(tiny_unet, nuclei):
    """With zero head weights every pixel's softmax is softmax(bias): the analytic shares are exact."""
    model = tiny_unet()
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.3, -0.2]))
    pool = crop_pool(nuclei, list(range(8)), 32, 2, seed=0)
    cases = simulate(model, pool, 6, 3, train_mode=True)
    attack = CompositionAttack().fit(model, cases, pool)
    for case, truth in cases:
        assert torch.allclose(attack.predict(model, case)["composition_analytic"], truth.composition, atol=1e-5)


def test_roc_scores_match_a_hand_computed_case():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right; at FPR 0 half the positives found
    auc, tpr = roc_scores([False, False, True, True], [0.1, 0.4, 0.35, 0.8])
    assert auc == pytest.approx(0.75)
    assert tpr is None  # 2 negatives cannot resolve a 1 % false-positive rate
    assert roc_scores([False, True], [0.0, 1.0]) == (1.0, None)
    # 100 negatives at 0..0.99 and positives at 0.975, 0.995, 2: one false positive (0.99) is allowed at 1 % FPR,
    # two (0.98, 0.99 above 0.975) are not, so the positives found are 0.995 and 2: TPR 2/3
    negatives = [i / 100 for i in range(100)]
    auc, tpr = roc_scores([False] * 100 + [True] * 3, negatives + [0.975, 0.995, 2.0])
    assert tpr == pytest.approx(2 / 3)
    with pytest.raises(SegauditError, match="both positive and negative"):
        roc_scores([True, True], [0.1, 0.2])


def test_property_spec_parses_and_holds():
    spec = PropertySpec.parse("nucleus>0.25", CLASSES)
    assert (spec.cls, spec.threshold, spec.scope) == (1, 0.25, "batch")
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :3] = 1  # image 0: 75 % nucleus, batch: 37.5 %
    assert spec.holds(masks)
    assert not PropertySpec.parse("1>0.5", CLASSES).holds(masks)
    assert PropertySpec.parse("any:nucleus>0.5", CLASSES).holds(masks)
    assert PropertySpec.parse("present:nucleus", CLASSES).image_holds(masks).tolist() == [True, False]


@pytest.mark.parametrize("spec, message", [
    ("tumour>0.1", "unknown class 'tumour'"),
    ("7>0.1", "unknown class '7'"),
    ("nucleus", "is not CLASS>X"),
    ("nucleus>1.5", r"must be in \[0, 1\)"),
])
def test_bad_property_specs_are_refused(spec, message):
    with pytest.raises(SegauditError, match=message):
        PropertySpec.parse(spec, CLASSES)


def test_attacks_see_only_the_update_the_prior_and_the_candidate():
    """Contract: a target case carries no truth, and every attack predicts from (model, case) alone."""
    assert [f.name for f in dataclasses.fields(Case)] == ["update", "prior", "candidate"]
    for name in INFERENCE.available():
        cls = INFERENCE.get(name)
        assert list(inspect.signature(cls.predict).parameters) == ["self", "model", "case"]
        # streamed: only features() reads a case; fitting and predicting see feature vectors (and shadow truth)
        assert list(inspect.signature(cls.features).parameters) == ["self", "model", "case"]
        assert list(inspect.signature(cls.predict_features).parameters) == ["self", "features"]


@pytest.mark.parametrize("attack", ["composition", "property", "membership"])
def test_every_attack_beats_chance_on_a_tiny_unet(tiny_unet, nuclei, attack):
    prop = None if attack == "membership" else "nucleus>0.2"
    result = run_inference(tiny_unet(), nuclei, attack, prop=prop, batch_size=2, updates=24, size=32,
                           crops_per_image=4, train_mode=False)
    assert len(result.scores) == 24 and sum(result.labels) == 12
    assert result.auc >= 0.75, result.auc
    assert result.auc_ci[0] <= result.auc <= result.auc_ci[1]
    if attack == "composition":
        assert result.composition_mae < 0.02
        lo, hi = result.composition_mae_ci
        assert lo <= result.composition_mae <= hi


def test_same_seed_same_result(tiny_unet, nuclei):
    runs = [run_inference(tiny_unet(), nuclei, "composition", batch_size=2, updates=3, size=32, crops_per_image=2)
            for _ in range(2)]
    assert runs[0].composition_mae == runs[1].composition_mae
    assert runs[0].auc is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(updates=0), "at least 1"),
    (dict(batch_size=1000), "batch size 1000 is outside"),
    (dict(attack="property"), "needs a property"),
    (dict(attack="guess"), "unknown inference attack 'guess'"),
    (dict(prop="tumour>0.1"), "unknown class"),
    (dict(prop="nucleus>0.99", attack="property"), "choose a threshold"),
])
def test_bad_inputs_are_refused(tiny_unet, nuclei, kwargs, message):
    kwargs = {"attack": "composition", "batch_size": 2, "updates": 4, "size": 32, "crops_per_image": 2, **kwargs}
    with pytest.raises(SegauditError, match=message):
        run_inference(tiny_unet(), nuclei, kwargs.pop("attack"), **kwargs)


def test_cli_infer_writes_result_and_roc(tmp_path, capsys):
    out = tmp_path / "inf"
    code = main(["--quiet", "infer", "--arch", "unet", "--data", "nuclei", "--size", "32", "--attack", "composition",
                 "--property", "nucleus>0.2", "--batch-size", "2", "--updates", "6", "--crops-per-image", "2",
                 "--client-mode", "eval", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    for key in ("attack", "batch_size", "updates", "auc", "tpr_at_1pct_fpr", "composition_mae"):
        assert key in result
    assert result["updates"] == 6 and 0 <= result["auc"] <= 1 and result["composition_mae"] < 0.05
    assert (out / "roc.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--property", "tumour>0.1"], "unknown class 'tumour'"),
    (["--batch-size", "5000"], "batch size 5000 is outside"),
    (["--updates", "0"], "at least 1"),
])
def test_cli_infer_bad_inputs_exit_2_with_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    code = main(["--quiet", "infer", "--data", "nuclei", "--size", "32", "--updates", "2", *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_calibration_uses_the_shadow_truth_only(tiny_unet, nuclei):
    """The calibrated map is a least-squares fit on the shadow updates: exact shares in, exact shares out."""
    model = tiny_unet()
    pool = crop_pool(nuclei, list(range(8)), 32, 2, seed=1)
    shadow = simulate(model, pool, 12, 2, seed=3, train_mode=False)
    attack = CompositionAttack().fit(model, shadow, pool)
    errors = [float((attack.predict(model, c)["composition"] - t.composition).abs().mean()) for c, t in shadow]
    assert np.mean(errors) < 0.01


class CountingDefense(Defense):
    """No change to the update; records how many of the updates it made before are still alive."""

    name = "none"

    def __init__(self):
        self.made, self.most_alive = [], 0

    def params(self):
        return {}

    def client_update(self, model, batch, protocol=None, *, seed=0, **settings):
        update = super().client_update(model, batch, protocol, seed=seed, **settings)
        self.made.append(weakref.ref(update))
        self.most_alive = max(self.most_alive, sum(r() is not None for r in self.made))
        return update


@pytest.mark.parametrize("attack", ["composition", "property", "membership"])
def test_run_inference_holds_one_update_at_a_time(tiny_unet, nuclei, attack):
    """Updates are featurised and dropped as they are made: the live ones do not grow with ``updates``
    (keeping every (Case, Truth) held 2 x updates full gradients and ran out of memory at 200)."""
    defense = CountingDefense()
    prop = None if attack == "membership" else "nucleus>0.2"
    result = run_inference(tiny_unet(), nuclei, attack, prop=prop, batch_size=2, updates=6, size=32,
                           crops_per_image=2, train_mode=False, defense=defense)
    assert len(defense.made) == 12 and result.settings["shadow_updates"] == 6
    assert defense.most_alive == 1, defense.most_alive
    assert all(r() is None for r in defense.made)


def test_stream_checks_at_once_and_makes_updates_lazily(tiny_unet, nuclei):
    pool = crop_pool(nuclei, list(range(4)), 32, 2, seed=0)
    with pytest.raises(SegauditError, match="at least 1"):
        stream(tiny_unet(), pool, 0, 2)  # raised before any iteration
    defense = CountingDefense()
    updates = stream(tiny_unet(), pool, 3, 2, defense=defense)
    assert defense.made == []
    next(updates)
    assert len(defense.made) == 1


def _materialised(model, dataset, attack, prop, batch_size, updates, size, crops_per_image, seed=0, **protocol):
    """run_inference as it was before streaming: every update kept in lists, ``fit`` and ``predict`` on them."""
    spec = PropertySpec.parse(prop, dataset.class_names) if prop else None
    everything = list(range(len(dataset)))  # the bundled data is split by crops
    public = crop_pool(dataset, everything, size, crops_per_image, seed + 1)
    reference = crop_pool(dataset, everything, size, crops_per_image, seed + 3)
    private = crop_pool(dataset, everything, size, crops_per_image, seed + 2)
    if spec is not None and spec.threshold is None:
        spec = spec.at_median(reference, batch_size, seed)
    question = "membership" if attack == "membership" else ("property" if spec else "none")
    common = dict(question=question, prop=spec, **protocol)
    targets = simulate(model, private, updates, batch_size, seed=seed + 10_000, **common)
    shadow = simulate(model, public, updates, batch_size, seed=seed + 20_000, **common)
    attacker_model = copy.deepcopy(model)
    inference = INFERENCE.get(attack)(spec).fit(attacker_model, shadow, reference)
    return [inference.predict(attacker_model, c) for c, _ in targets], [t for _, t in targets]


@pytest.mark.parametrize("attack, prop, protocol", [
    ("composition", "nucleus>median", dict(train_mode=True)),
    ("composition", None, dict(mode="fedavg", local_steps=2, lr=0.05)),
    ("property", "nucleus>median", dict(train_mode=False)),
    ("membership", None, dict(train_mode=False)),
])
def test_streaming_gives_the_result_of_a_materialised_list(tiny_unet, nuclei, attack, prop, protocol):
    settings = dict(batch_size=2, updates=6, size=32, crops_per_image=2, **protocol)
    result = run_inference(tiny_unet(), nuclei, attack, prop=prop, **settings)
    predictions, truths = _materialised(tiny_unet(), nuclei, attack, prop, **settings)
    if truths[0].label is not None:
        assert result.labels == [t.label for t in truths]
        assert result.scores == [p["score"] for p in predictions]
    if attack == "composition":
        errors = [float((p["composition"] - t.composition).abs().mean()) for p, t in zip(predictions, truths)]
        assert result.composition_mae == pytest.approx(np.mean(errors), abs=1e-12)
        analytic = [float((p["composition_analytic"] - t.composition).abs().mean())
                    for p, t in zip(predictions, truths)]
        assert result.composition_mae_analytic == pytest.approx(np.mean(analytic), abs=1e-12)
