"""The HTML report and its findings: self-contained, escaped, redactable, honest about what is missing."""
from __future__ import annotations

import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from segaudit.cli import main
from segaudit.errors import SegauditError
from segaudit.report.findings import recommendations, risk
from segaudit.report.html import png_data_uri, read_results, render, write_html

EXAMPLE = Path(__file__).parent / "data" / "results_example.json"
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


@pytest.mark.parametrize("results, level", [
    ({"runs": [_run(psnr=24.0, ssim=0.2, mask_dice=0.3)]}, "high"),
    ({"runs": [_run(psnr=12.0, ssim=0.1, mask_dice=0.85)]}, "high"),  # the mask alone leaks
    ({"runs": [_run(psnr=17.0, ssim=0.1, mask_dice=0.3)]}, "medium"),
    ({"runs": [_run(psnr=12.0, ssim=0.35, mask_dice=0.3)]}, "medium"),
    ({"runs": [_run(psnr=12.0, ssim=0.1, mask_dice=0.3), _run(psnr=21.0, ssim=0.1, mask_dice=0.3)]}, "high"),  # worst image
    ({"runs": [_run(psnr=12.0, ssim=0.1, mask_dice=0.3)]}, "low"),
    ({"runs": [_run("noise:0.1", psnr=30.0)]}, "unknown"),  # nothing undefended measured
    ({"runs": [{**_run(psnr=30.0), "status": "failed"}]}, "unknown"),  # failed runs do not count
    ({"inference": [{"defense": "none", "auc": 0.95}]}, "high"),
    ({"inference": [{"defense": "none", "auc": 0.75}], "runs": [_run(psnr=10.0)]}, "medium"),
    ({"cells": [{"defense": "none", "psnr": {"mean": 16.0, "ci": [15, 17]}}]}, "medium"),
    ({}, "unknown"),
])
def test_risk_known_answers(results, level):
    assert risk(results)["level"] == level


def test_risk_says_what_is_missing():
    found = risk({"cells": [{"defense": "none", "psnr": {"mean": 16.0}}]})
    assert any("mask Dice" in m for m in found["missing"]) and any("inference" in m for m in found["missing"])
    assert any("cell means" in m for m in found["missing"])
    assert found["reasons"] == ["PSNR 16 dB ≥ 15 dB (? on ?, batch ?)"]


def test_recommendations_quote_measured_numbers(example):
    recs = recommendations(example)
    joined = "\n".join(recs)
    assert "dp:eps=8 brought the attack below 15 dB PSNR (12.0 dB, from 24.5 dB undefended)" in joined
    assert "0.710 vs 0.930 (loss 0.220)" in joined
    assert "ε = 8 at δ = 1e-05" in joined and "BatchNorm2d -> GroupNorm" in joined
    assert "encoder.layer1 (score 0.71" in joined
    assert "AUC 0.99" in joined and "1 of 3 runs did not finish" in joined
    assert all(any(ch.isdigit() for ch in r) for r in recs)


def test_recommendations_batch_effect_and_no_safe_defense():
    cells = [{"model": "m", "attack": "seg", "defense": "none", "mode": "fedsgd", "batch_size": b, "psnr": {"mean": p}}
             for b, p in ((1, 25.0), (4, 18.0), (16, 13.0))]
    tradeoff = [{"model": "m", "defense": "none", "utility_dice": 0.9, "attack_psnr": 25.0},
                {"model": "m", "defense": "noise:0.001", "utility_dice": 0.89, "attack_psnr": 19.5}]
    joined = "\n".join(recommendations({"cells": cells, "tradeoff": tradeoff}))
    assert "25.0 dB at batch 1, 18.0 dB at batch 4, 13.0 dB at batch 16" in joined
    assert "batches of 16 or more images fell below 15 dB" in joined
    assert "the only defense tested, noise:0.001, did not bring the attack below 15 dB PSNR: it left 19.5 dB" in joined


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
    found = risk({"tradeoff": [{"model": "m", "defense": "none", "attack_psnr": 22.0, "attack_mask_dice": 0.4},
                               {"model": "m", "defense": "dp:eps=1", "attack_psnr": 30.0}]})
    assert found["level"] == "high" and found["worst"]["psnr"] == 22.0


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
