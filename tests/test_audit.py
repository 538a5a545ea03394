"""The audit: config round trip and unknown keys, the results store, resume, interruption, report, CLI."""
import json
import sqlite3
from html.parser import HTMLParser

import pytest

from segaudit import audit
from segaudit.attacks import ATTACKS
from segaudit.cli import main
from segaudit.config import AuditConfig, ModelConfig
from segaudit.demo import demo_config
from segaudit.errors import SegauditError
from segaudit.report.findings import LEVELS
from segaudit.results import load_results
from segaudit.store import ResultsStore


def tiny_config(**kw) -> AuditConfig:
    base = dict(name="tiny", size=32, models=(ModelConfig("unet", train_steps=3),), attack_steps=2,
                batch_sizes=(1,), images=2, defenses=("none",), inference=("composition",), inference_updates=4,
                layers=False, client_mode="eval")  # 32 px: a train-mode client cannot train on one image
    return AuditConfig(**{**base, **kw})


def test_config_round_trips_through_dict_and_yaml(tmp_path):
    import yaml

    config = demo_config()
    assert AuditConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert AuditConfig.from_yaml(path) == config
    assert AuditConfig.from_yaml(path).digest() == config.digest()
    assert len(config.models) == 2 and "dp:eps=8" in config.defenses and set(config.modes) == {"fedsgd", "fedavg"}


@pytest.mark.parametrize("raw, message", [
    ({"atacks": ["seg"]}, "unknown config key 'atacks'"),
    ({"models": [{"name": "a", "archh": "unet"}]}, r"unknown config key 'models\[0\].archh'"),
    ({"size": "big"}, "'size' must be int"),
    ({"modes": ["fedprox"]}, "unknown mode 'fedprox'"),
    ({"defenses": ["magic:1"]}, "unknown defense 'magic'"),
    ({"attacks": ["nope"]}, "unknown attack 'nope'"),
    ({"models": []}, "no models"),
    ({"batch_sizes": [0]}, "positive batch sizes"),
    ({"models": [{"name": "../../x"}]}, r"model name '\.\./\.\./x' is not a plain label"),
    ({"models": [{"name": "a\\b"}]}, "is not a plain label"),
    ({"models": [{"name": ".."}]}, r"model name '\.\.' is not a plain label"),
    ({"models": [{"name": "x\n"}]}, r"model name 'x\\n' is not a plain label"),
])
def test_bad_configs_are_refused_naming_the_key(raw, message):
    with pytest.raises(SegauditError, match=message):
        AuditConfig.from_dict(raw)


def test_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [unclosed\n")
    with pytest.raises(SegauditError, match="cannot read config"):
        AuditConfig.from_yaml(bad)
    with pytest.raises(SegauditError, match="does not exist"):
        AuditConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "run"
    return out, audit.run(tiny_config(), out, progress=False)


def test_audit_writes_store_results_and_report(finished):
    out, result = finished
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(result.results))
    assert {r["kind"] for r in ResultsStore(out / "results.sqlite").runs()} == {"train", "attack", "inference"}
    assert len(results["runs"]) == 2 and results["cells"][0]["n"] == 2
    assert results["models"][0]["params"] > 1e6 and results["config_hash"] == tiny_config().digest()
    assert results["versions"]["torch"] and results["risk"]["level"] in LEVELS
    assert all((out / r["artefacts"]["grid"]).is_file() for r in results["runs"])
    assert load_results(out / "results.sqlite")["runs"] == results["runs"]
    html = (out / "report.html").read_text()
    links = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            links.extend(v for k, v in attrs if k in ("src", "href") and v)

    Links().feed(html)
    assert not [v for v in links if v.startswith(("http:", "https:", "//"))]


def test_rerun_skips_finished_runs(finished, monkeypatch):
    out, first = finished
    store = ResultsStore(out / "results.sqlite")
    before = {r["key"]: r["seconds"] for r in store.runs()}
    monkeypatch.setattr(ATTACKS, "create", lambda *a, **k: pytest.fail("a finished attack ran again"))
    again = audit.run(tiny_config(), out, progress=False)
    assert {r["key"]: r["seconds"] for r in store.runs()} == before
    assert again.results["runs"] == first.results["runs"]


def stable(value):
    """``results.json`` values without wall-clock fields (when it ran, how long it took) or the command line."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in ("created", "seconds", "runtime_s", "command")}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def same_outputs(a, b) -> None:
    """Two audit folders hold the same results.json (bar timings), reconstruction grids and trained weights."""
    ra, rb = (json.loads((out / "results.json").read_text()) for out in (a, b))
    assert json.dumps(stable(ra), sort_keys=True) == json.dumps(stable(rb), sort_keys=True)
    for run in ra["runs"]:
        assert (a / run["artefacts"]["grid"]).read_bytes() == (b / run["artefacts"]["grid"]).read_bytes()
    weights = [next((out / "models").glob("*/model.safetensors")).read_bytes() for out in (a, b)]
    assert weights[0] == weights[1]


def test_same_seed_and_config_give_bit_identical_results_and_record_how_to_rerun(finished, tmp_path, capsys):
    import shlex

    import yaml

    out, _ = finished
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config().to_dict()))
    argv = ["--quiet", "audit", str(config), "--out", str(tmp_path / "again")]
    assert main(argv) == 0, capsys.readouterr().err
    same_outputs(out, tmp_path / "again")
    results = json.loads((tmp_path / "again" / "results.json").read_text())
    assert AuditConfig.from_dict(results["config"]) == tiny_config()
    assert results["config_hash"] == tiny_config().digest()
    assert results["config"]["seeds"] == [0] and results["created"]
    assert {"python", "torch", "segmentation_models_pytorch", "opacus", "segaudit"} <= set(results["versions"])
    assert shlex.split(results["command"]) == ["segaudit", *argv]  # the command line, quoted for a shell


def test_an_interrupted_audit_keeps_a_consistent_store_and_resumes(finished, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    create = ATTACKS.create
    calls = []

    def interrupt_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return create(*args, **kw)

    monkeypatch.setattr(ATTACKS, "create", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        audit.run(tiny_config(), out, progress=False)
    db = sqlite3.connect(out / "results.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT kind, COUNT(*) FROM runs GROUP BY kind ORDER BY kind").fetchall() == [
        ("attack", 1), ("train", 1)]
    assert not (out / "results.json").exists() and not (out / "report.html").exists()
    monkeypatch.setattr(ATTACKS, "create", create)
    result = audit.run(tiny_config(), out, progress=False)
    assert len(result.results["runs"]) == 2 and (out / "report.html").is_file()
    same_outputs(out, finished[0])  # the same results as the uninterrupted audit, not just a finished one


def test_a_folder_without_a_store_is_not_clobbered(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SegauditError, match="pass --force"):
        audit.run(tiny_config(), tmp_path, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine" and not (tmp_path / "results.sqlite").exists()


def test_force_never_replaces_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SegauditError, match="refusing to replace '.'"):
        audit.run(tiny_config(), ".", force=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("outcome", [{"files": {"../evil.png": b"x"}}, {"files": {"/tmp/evil.png": b"x"}},
                                     {"dirs": {"models/../../evil": {"a": b"x"}}},
                                     {"dirs": {"models/m": {"../../../evil": b"x"}}}])
def test_a_cell_outcome_cannot_write_outside_the_audit_folder(tmp_path, outcome):
    out = tmp_path / "out"
    out.mkdir()
    store = ResultsStore(out / "results.sqlite")
    done = {"key": "k", "kind": "attack", "settings": {}, "result": {"status": "ok"}, "seconds": 0.0, **outcome}
    with pytest.raises(SegauditError, match="output names must stay inside"):
        audit.save_outcome(done, store, out)
    assert store.runs() == [] and not [p for p in tmp_path.rglob("*") if p.is_file() and "evil" in str(p)]


def test_cli_audit_bad_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "a.yaml"
    config.write_text("name: x\nattack_step: 3\n")
    assert main(["--quiet", "audit", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'attack_step'") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_html_in_class_file_and_model_names_comes_out_escaped_and_everything_stays_in_out(tmp_path):
    import numpy as np
    from PIL import Image

    evil_file, evil_class = "<img src=x onerror=alert(1)>", "<script>alert(1)</script>"
    evil_model = '<b onmouseover="alert(1)">m'
    data = tmp_path / evil_file  # the data folder's name is shown in the report; file names pair by it too
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8 + i:20 + i] = 1
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(data / "images" / f"{evil_file}{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"{evil_file}{i}.png")
    (data / "classes.json").write_text(json.dumps(["background", evil_class]))
    before = set(tmp_path.rglob("*"))
    out = tmp_path / "out"
    result = audit.run(tiny_config(data=str(data), models=(ModelConfig(evil_model, train_steps=3),)), out,
                       progress=False)
    assert all(p.is_relative_to(out) for p in set(tmp_path.rglob("*")) - before)  # nothing written beside out
    assert result.results["data"]["classes"] == ["background", evil_class]  # kept as data, escaped when shown
    html = (out / "report.html").read_text()
    for raw in (evil_file, evil_class, evil_model, "<script", "<img src=x", "<b "):
        assert raw not in html
    for escaped in ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(1)&gt;",
                    "&lt;b onmouseover=&#34;alert(1)&#34;&gt;m"):
        assert escaped in html
    tags = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))

    Tags().feed(html)
    assert not [t for t, a in tags if t == "script" or any(k.startswith("on") for k in a)]
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in tags if t == "img")
