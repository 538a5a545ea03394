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
from segaudit.store import ResultsStore, load_results


def tiny_config(**kw) -> AuditConfig:
    base = dict(name="tiny", size=32, models=(ModelConfig("unet", train_steps=3),), attack_steps=2,
                batch_sizes=(1,), images=2, defenses=("none",), inference=("composition",), inference_updates=4,
                layers=False)
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
    assert results["versions"]["torch"] and results["risk"]["level"] in ("low", "medium", "high")
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


def test_an_interrupted_audit_keeps_a_consistent_store_and_resumes(tmp_path, monkeypatch):
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


def test_a_folder_without_a_store_is_not_clobbered(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SegauditError, match="pass --force"):
        audit.run(tiny_config(), tmp_path, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine" and not (tmp_path / "results.sqlite").exists()


def test_cli_audit_bad_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "a.yaml"
    config.write_text("name: x\nattack_step: 3\n")
    assert main(["--quiet", "audit", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'attack_step'") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
