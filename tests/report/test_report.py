"""The HTML report and its findings: self-contained, escaped, redactable, honest about what is missing."""
from __future__ import annotations

import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from segaudit.cli import main
from segaudit.errors import SegauditError
from segaudit.report.findings import LEVELS, recommendations, risk
from segaudit.report.html import png_data_uri, read_results, render, write_html

EXAMPLE = Path(__file__).parent / "results_example.json"
EVIL = "<script>alert(1)</script>"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(text: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def imgs(text: str) -> list[str]:
    return [a["src"] for t, a in tags(text) if t == "img"]


def _png(path: Path, value: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path.read_bytes()


@pytest.fixture
def example() -> dict:
    return json.loads(EXAMPLE.read_text())


@pytest.fixture
def audit_dir(tmp_path) -> Path:
    """The example results with its two reconstruction grids present."""
    out = tmp_path / "audit"
    out.mkdir()
    shutil.copy(EXAMPLE, out / "results.json")
    for i, run in enumerate(("a1b2c3", "d4e5f6")):
        _png(out / "artefacts" / f"{run}.png", 40 + i)
    return out


def test_example_renders_self_contained(audit_dir, example):
    path = write_html(example, audit_dir / "report.html", base_dir=audit_dir)
    text = path.read_text()
    assert [p.name for p in audit_dir.iterdir() if p.name.startswith(".")] == []  # atomic: no temp file left
    for section in ("summary", "model", "threat", "attacks", "reconstructions", "layers", "tradeoff", "dp",
                    "inference", "recommendations", "compliance", "repro"):
        assert f'id="{section}"' in text
    links = [a.get(k) or "" for _, a in tags(text) for k in ("src", "href")]
    assert not [u for u in links if u.lower().startswith(("http:", "https:", "//"))]
    assert "http://" not in text.replace('http-equiv', '') and "https://" not in text
    sources = imgs(text)
    assert len(sources) == 4  # two reconstruction grids, the layer chart, the frontier
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(t != "link" and t != "script" for t, _ in tags(text))
    assert 'class="level high"' in text and "24.5 dB" in text
    assert "[22.4, 25.2]" in text  # a cell's 95 % CI
    assert "BatchNorm2d -&gt; GroupNorm" in text and "3f2a9c1d5e7b" in text
    assert "GDPR" in text and "Annex IV" in text and "HIPAA" in text and "not a legal assessment" in text


def test_untrusted_names_are_escaped(audit_dir, example):
    example["config"]["name"] = EVIL
    example["models"][0]["name"] = EVIL
    example["models"][0]["class_names"] = ["background", EVIL]
    example["data"]["classes"] = ["background", EVIL]
    example["runs"][0]["model"] = EVIL
    example["runs"][1]["artefacts"]["grid"] = EVIL + ".png"
    example["runs"][2]["error"] = EVIL
    example["cells"][0]["defense"] = EVIL
    example["tradeoff"][1]["defense"] = EVIL + "$x^$"
    example["layers"]["unet"]["groups"][0]["name"] = EVIL
    example["inference"][0]["property"] = EVIL
    text = render(example, base_dir=audit_dir)
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert all(t != "script" for t, _ in tags(text))


def test_redact_omits_reconstructions(audit_dir, example):
    grid = base64.b64encode((audit_dir / "artefacts" / "a1b2c3.png").read_bytes()).decode()
    plain = render(example, base_dir=audit_dir)
    redacted = render(example, base_dir=audit_dir, redact=True)
    assert grid in plain and grid not in redacted
    assert len(imgs(redacted)) == 2  # charts only
    assert "Redacted." in redacted and "omitted" in redacted


def test_missing_sections_say_not_measured():
    text = render({"schema": 1, "runs": [{"kind": "attack", "status": "failed", "error": "no valid reconstruction",
                                          "defense": "none", "metrics": {}}]})
    for what in ("no attack result cells", "per-layer leakage was not part", "no privacy–utility trade-off",
                 "no differentially private training", "no inference attack", "no model description"):
        assert what in text
    assert 'class="level unknown"' in text and "no valid reconstruction" in text
    assert imgs(text) == []
    assert "newer than this report" in render({"schema": 99})


def test_unknown_keys_and_bad_values_are_tolerated(example):
    example["future_section"] = {"x": 1}
    example["cells"][0]["psnr"] = {"mean": "n/a", "ci": None}
    example["layers"] = {"unet": "broken"}
    example["tradeoff"] = "not a list"
    text = render(example)
    assert "reconstruction images were not embedded" in text  # no base_dir: artefacts are not read
    assert imgs(text) == []


def _run(defense="none", **metrics):
    return {"kind": "attack", "model": "m", "attack": "seg", "defense": defense, "mode": "fedsgd", "batch_size": 1,
            "status": "ok", "metrics": metrics}


def _gains(psnr=-1.0, ssim=-0.1, mask=-0.1):
    return {"psnr_gain": psnr, "ssim_gain": ssim, "mask_dice_gain": mask}


DP8 = {"epsilon": 8.0, "delta": 1e-5}


@pytest.mark.parametrize("results, level", [
    ({"runs": [_run(psnr=26.5, **_gains(psnr=3.5))]}, "high"),
    ({"runs": [_run(psnr=12.0, **_gains(mask=0.45))]}, "high"),  # the mask alone leaks
    ({"runs": [_run(psnr=12.0, **_gains(mask=0.15))]}, "not shown"),  # another image's mask reaches 0.14
    ({"runs": [_run(psnr=17.0, **_gains(psnr=1.5))]}, "medium"),
    ({"runs": [_run(psnr=12.0, **_gains(ssim=0.2))]}, "medium"),
    ({"runs": [_run(psnr=12.0, **_gains(ssim=0.1))]}, "not shown"),  # another real image reaches 0.11
    ({"runs": [_run(**_gains()), _run(**_gains(psnr=4.0))]}, "high"),  # without cells, the best run decides
    ({"cells": [{"defense": "none", "psnr_gain": {"mean": 0.5}}],  # with cells, their means decide
      "runs": [_run(**_gains()), _run(**_gains(psnr=4.0))]}, "not shown"),
    # a raw 24 dB that does not beat the flat image is nothing shown, never low: no guarantee
    ({"runs": [_run(psnr=24.0, baseline_psnr=24.5, **_gains(psnr=-0.5))]}, "not shown"),
    ({"runs": [_run(psnr=23.0, **_gains(psnr=0.0, ssim=0.0, mask=0.0))]}, "not shown"),  # the flat image itself
    # DP at eps <= 10 (delta < 1/N) and nothing shown: low; the same without DP: not shown; at eps 50: not shown
    ({"runs": [{**_run("dp:eps=8", **_gains()), "dp": DP8}], "data": {"images": 16}}, "low"),
    ({"runs": [_run("noise:0.1", **_gains())], "data": {"images": 16}}, "not shown"),
    ({"runs": [{**_run("dp:eps=50", **_gains()), "dp": {"epsilon": 50.0, "delta": 1e-5}}]}, "not shown"),
    ({"runs": [{**_run("dp:eps=8", **_gains()), "dp": {"epsilon": 8.0, "delta": 0.1}}], "data": {"images": 16}},
     "not shown"),  # delta not below 1/N
    ({"runs": [{**_run("dp:eps=8", **_gains(psnr=5.0)), "dp": DP8}]}, "high"),  # DP that still leaks
    ({"runs": [{**_run(psnr=30.0), "status": "failed"}]}, "unknown"),  # failed runs do not count
    ({"runs": [_run(psnr=30.0)]}, "unknown"),  # a raw PSNR without its baseline rates nothing
    ({"inference": [{"defense": "none", "auc": 0.95}]}, "high"),
    ({"inference": [{"defense": "none", "auc": 0.95, "auc_ci": [0.4, 1.0]}]}, "not shown"),  # interval reaches chance
    ({"inference": [{"defense": "none", "auc": 0.75}], "runs": [_run(**_gains())]}, "medium"),
    ({"inference": [{"defense": "none", "auc": 0.42}]}, "not shown"),
    ({"cells": [{"defense": "none", "psnr_gain": {"mean": 1.2, "ci": None}}]}, "medium"),
    ({"cells": [{"defense": "none", "psnr_gain": {"mean": -2.0},
                 "identification": {"rate": 0.6, "ci": [0.4, 0.8], "n": 20, "chance": 1 / 32}}]}, "high"),
    ({"cells": [{"defense": "none", "psnr_gain": {"mean": -2.0},
                 "identification": {"rate": 0.2, "ci": [0.08, 0.42], "n": 20, "chance": 1 / 32}}]}, "medium"),
    ({"cells": [{"defense": "none", "psnr_gain": {"mean": -2.0},
                 "identification": {"rate": 0.05, "ci": [0.01, 0.24], "n": 20, "chance": 1 / 32}}]}, "not shown"),
    ({}, "unknown"),
])
def test_risk_known_answers(results, level):
    found = risk(results)
    assert found["level"] == level and found["level"] in LEVELS


def test_not_shown_says_it_is_no_evidence_of_privacy_and_what_was_not_tried():
    found = risk({"runs": [_run(**_gains())], "config": {"modes": ["fedsgd"], "client_mode": "eval",
                                                          "attack_steps": 60, "batch_sizes": [1]}})
    assert found["level"] == "not shown" and "not evidence of privacy" in found["statement"]
    assert "FedAvg weight updates" in found["not_tried"] and "attack budgets above 60 steps" in found["not_tried"]
    assert any("clients in train mode" in t for t in found["not_tried"])
    assert any("not evidence of privacy" not in r and "did not beat their baselines" in r
               for r in recommendations({"runs": [_run(**_gains())]}))


def test_the_flat_image_gains_nothing_and_is_not_shown():
    """Known answer (issue 17): a flat image at the true mean as the 'reconstruction' scores gain 0 -> not shown."""
    from segaudit.metrics import score
    from segaudit.types import Batch, Reconstruction

    images = torch.rand(1, 1, 16, 16)
    masks = (images[:, 0] > 0.5).long()
    batch = Batch(images, masks, ("bg", "fg"), ("x",), (0.0,), (1.0,))
    flat = images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    constant = torch.full_like(masks, int(masks.float().mean() > 0.5))
    metrics = score(Reconstruction(flat, constant), batch)
    assert metrics["psnr_gain"] == pytest.approx(0.0, abs=1e-9)
    assert risk({"runs": [_run(**metrics)]})["level"] == "not shown"


def test_risk_says_what_is_missing():
    found = risk({"cells": [{"defense": "none", "psnr_gain": {"mean": 1.5}}]})
    assert any("mask Dice gain" in m for m in found["missing"]) and any("inference" in m for m in found["missing"])
    assert found["reasons"] == ["PSNR gain +1.5 dB over the attacker's baseline (? on ?, batch ?)"]


def test_recommendations_quote_measured_numbers(example):
    recs = recommendations(example)
    joined = "\n".join(recs)
    assert ("dp:eps=8 left the attack no better than the attacker's baseline (PSNR gain -10.0 dB, from +1.5 dB "
            "undefended)") in joined
    assert "0.710 vs 0.930 (loss 0.220)" in joined
    assert "ε = 8 at δ = 1e-05" in joined and "BatchNorm2d -> GroupNorm" in joined
    assert "encoder.layer1 (score 0.71" in joined
    assert "AUC 0.99" in joined and "1 of 3 runs did not finish" in joined
    assert all(any(ch.isdigit() for ch in r) for r in recs)


def test_recommendations_batch_effect_and_no_safe_defense():
    cells = [{"model": "m", "attack": "seg", "defense": "none", "mode": "fedsgd", "batch_size": b,
              "psnr_gain": {"mean": g}} for b, g in ((1, 3.5), (4, 0.4), (16, -1.0))]
    tradeoff = [{"model": "m", "defense": "none", "utility_dice": 0.9, "attack_psnr_gain": 3.5},
                {"model": "m", "defense": "noise:0.001", "utility_dice": 0.89, "attack_psnr_gain": 1.5}]
    joined = "\n".join(recommendations({"cells": cells, "tradeoff": tradeoff}))
    assert "+3.5 dB at batch 1, +0.4 dB at batch 4, -1.0 dB at batch 16" in joined
    assert "from batches of 16 images on the attack no longer beat its baseline" in joined
    assert ("the only defense tested, noise:0.001, did not stop the attack beating its baseline: it left a PSNR gain "
            "of +1.5 dB") in joined


def test_a_defense_that_raised_psnr_is_not_called_a_success():
    """Issue 17: 'noise:0.01 brought the attack below 15 dB (14.9 dB, from 13.2 dB undefended)' must not recur."""
    tradeoff = [{"model": "m", "defense": "none", "utility_dice": 0.9, "attack_psnr": 13.2, "attack_psnr_gain": -1.0},
                {"model": "m", "defense": "noise:0.01", "utility_dice": 0.89, "attack_psnr": 14.9,
                 "attack_psnr_gain": 0.7}]
    joined = "\n".join(recommendations({"tradeoff": tradeoff}))
    assert "did not stop the attack beating its baseline" in joined and "below 15 dB" not in joined


def test_a_weak_inference_auc_is_not_called_a_leak():
    rows = [{"model": "m", "attack": "composition", "defense": "none", "batch_size": 8, "auc": 0.42,
             "composition_mae": 0.03}]
    joined = "\n".join(recommendations({"inference": rows}))
    assert "AUC 0.42" in joined and "leaks" not in joined


def test_artefact_paths_outside_the_results_folder_are_not_read(tmp_path, example):
    base = tmp_path / "audit"
    secret = _png(tmp_path / "secret.png", 200)
    (base / "artefacts").mkdir(parents=True)
    (base / "artefacts" / "notes.txt").write_text("not an image")
    (base / "artefacts" / "fake.png").write_text("not a png")
    os.symlink(tmp_path / "secret.png", base / "artefacts" / "link.png")
    for path, why in (("../../etc/passwd", "outside"), ("/etc/passwd", "absolute"), ("../secret.png", "outside"),
                      ("artefacts/link.png", "outside"), ("artefacts/notes.txt", ".png"),
                      ("artefacts/fake.png", "not a PNG"), ("artefacts/none.png", "not found")):
        uri, reason = png_data_uri(path, base)
        assert uri is None and why in reason, (path, reason)
    example["runs"][0]["artefacts"]["grid"] = "../../etc/passwd"
    example["runs"][1]["artefacts"]["grid"] = "../secret.png"
    text = render(example, base_dir=base)
    assert base64.b64encode(secret).decode() not in text and "root:" not in text
    assert "../../etc/passwd: path leads outside the results folder; not shown" in text


def test_read_results_errors(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text('{"schema": 1,')
    with pytest.raises(SegauditError, match="not valid JSON"):
        read_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(SegauditError, match="not a results object"):
        read_results(bad)
    with pytest.raises(SegauditError, match="not found"):
        read_results(tmp_path / "missing.json")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SegauditError, match="without results.json"):
        read_results(tmp_path / "sub")
    with pytest.raises(SegauditError, match="must be a dict"):
        write_html([], tmp_path / "r.html")


def test_cli_report(audit_dir, capsys):
    out = audit_dir / "report.html"
    assert main(["report", str(audit_dir / "results.json"), "--out", str(out), "--redact"]) == 0
    assert "redacted" in out.read_text().lower()
    before = out.read_bytes()
    assert main(["report", str(audit_dir / "results.json"), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["report", str(audit_dir), "--force"]) == 0  # the folder; default --out beside results.json
    assert len(imgs(out.read_text())) == 4
    corrupt = audit_dir / "corrupt.json"
    corrupt.write_text('{"runs": [')
    capsys.readouterr()
    assert main(["report", str(corrupt), "--out", str(audit_dir / "c.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not valid JSON" in err and err.count("\n") == 1
    assert not (audit_dir / "c.html").exists()


def test_risk_counts_the_undefended_tradeoff_row():
    found = risk({"tradeoff": [{"model": "m", "defense": "none", "attack_psnr": 22.0, "attack_psnr_gain": 3.2},
                               {"model": "m", "defense": "dp:eps=1", "attack_psnr": 30.0, "attack_psnr_gain": 9.0}]})
    assert found["level"] == "high" and found["worst"]["psnr_gain"] == 3.2


def test_figure_titles_take_names_with_dollar_signs_as_text(tmp_path):
    """A model named like matplotlib maths ('$\\frac$') must not fail the cell that draws its figure."""
    import torch

    from segaudit.report.plots import reconstruction_grid, roc_plot
    from segaudit.types import Batch, Reconstruction

    batch = Batch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), ("bg", "fg"))
    name = r"my$\frac$model"
    path = reconstruction_grid(batch, Reconstruction(batch.images, batch.masks), tmp_path / "grid.png", title=name)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert roc_plot([0, 1], [0.2, 0.8], tmp_path / "roc.png", title=name).is_file()


def test_the_malicious_server_worst_case_stays_out_of_the_verdict_and_is_labelled():
    honest = {"model": "m", "attack": "seg", "defense": "none", "mode": "fedsgd", "batch_size": 8, "n": 3,
              "psnr_gain": {"mean": -2.0}, "threat": "honest-but-curious server"}
    trapped = {**honest, "attack": "imprint", "psnr_gain": {"mean": 120.0}, "mask_dice_gain": {"mean": 0.6},
               "threat": "malicious server",
               "identification": {"rate": 1.0, "ci": [0.6, 1.0], "n": 8, "chance": 1 / 32}}
    results = {"cells": [honest, trapped], "runs": [{**_run(**_gains(psnr=120.0)), "attack": "imprint",
                                                      "threat": "malicious server"}], "config": {}}
    found = risk(results)
    assert found["level"] == "not shown" and not any("imprint" in r for r in found["reasons"])
    assert not any("malicious server" in t for t in found["not_tried"])  # it was tried, as the worst case
    assert any("malicious server" in t for t in risk({"cells": [honest]})["not_tried"])
    text = render(results)
    assert "Malicious-server worst case (opt-in)" in text and "they do not enter the risk level" in text
    assert "Out of scope: a malicious server" not in text
    assert "Out of scope: a malicious server" in render({"cells": [honest]})
