"""Sweeps: the sequential path, the local process pool and a local Ray instance give identical results; resume;
a failing cell is recorded and the sweep finishes; executor errors are one line. Real models, a real Ray."""
import json
import sqlite3
import sys

import pytest
import torch

from segaudit import audit, sweep
from segaudit.cli import main
from segaudit.config import AuditConfig, ModelConfig
from segaudit.errors import SegauditError
from segaudit.store import ResultsStore

UNET, PAN = ModelConfig("unet", train_steps=3), ModelConfig("pan", arch="pan", train_steps=3)


def grid(**kw) -> AuditConfig:
    """One attack at 2 seeds and composition inference on a U-Net; a PAN whose training cell fails
    (PAN needs crops of 128 px or more), so its cells are left out and the sweep goes on."""
    base = dict(name="grid", size=32, models=(UNET, PAN), attack_steps=2, batch_sizes=(1,), seeds=(0, 1), images=1,
                defenses=("none",), inference=("composition",), inference_updates=4, layers=False,
                client_mode="eval")  # 32 px: a train-mode client cannot train on one image
    return AuditConfig(**{**base, **kw})


def rows(out) -> dict:
    """Stored rows by key: kind, settings and result (timings left out)."""
    db = sqlite3.connect(out / "results.sqlite")
    try:
        return {k: (kind, json.loads(s), json.loads(r)) for k, kind, s, r in
                db.execute("SELECT key, kind, settings, result FROM runs")}
    finally:
        db.close()


def without_runtime(value):
    if isinstance(value, dict):
        return {k: without_runtime(v) for k, v in value.items() if k not in ("runtime_s", "seconds")}
    if isinstance(value, (list, tuple)):
        return [without_runtime(v) for v in value]
    return value


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same grid run three ways (each cell on one torch thread, so float sums are the same)."""
    root = tmp_path_factory.mktemp("sweeps")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audit.run(grid(), root / "sequential", progress=False)
    finally:
        torch.set_num_threads(threads)
    local = sweep.LocalExecutor(max_parallel=2)
    with local:
        sweep_result = audit.run(grid(), root / "local", progress=False, executor=local)
    with sweep.RayExecutor(max_parallel=2, num_cpus=2) as ray_ex:
        audit.run(grid(), root / "ray", progress=False, executor=ray_ex)
    return root, sweep_result


def test_sequential_local_and_ray_give_identical_results(runs):
    root, _ = runs
    seq, local, ray = (rows(root / name) for name in ("sequential", "local", "ray"))
    assert len(seq) == 2 + 2 + 1  # two training cells, two attack cells, one inference cell
    assert without_runtime(local) == without_runtime(seq) == without_runtime(ray)
    results = [json.loads((root / name / "results.json").read_text()) for name in ("sequential", "local", "ray")]
    seq_runs, local_runs, ray_runs = (without_runtime(r["runs"]) for r in results)
    assert local_runs == seq_runs == ray_runs
    assert results[1]["cells"] == results[0]["cells"] == results[2]["cells"]
    for r in results[2]["runs"]:  # the driver wrote every worker's artefact, byte for byte the same
        png = r["artefacts"]["grid"]
        assert (root / "ray" / png).read_bytes() == (root / "local" / png).read_bytes()
    assert (root / "ray" / "report.html").is_file()
    weights = [next((root / name / "models").glob("unet-*/model.safetensors")).read_bytes()
               for name in ("sequential", "local", "ray")]
    assert weights[0] == weights[1] == weights[2]  # the training stage too
    psnr = [r["metrics"]["psnr"] for r in results[0]["runs"]]
    assert len(set(psnr)) == 2  # the cells differ: each is seeded from its own settings


def test_a_failing_cell_is_recorded_and_the_sweep_finishes(runs):
    root, result = runs
    assert result.cells == {"planned": 2 + 2 * 3, "run": 2 + 3, "failed": 1, "left_out": 3}
    train = {r["model"]: r for r in ResultsStore(root / "local" / "results.sqlite").runs("train")}
    assert train["pan"]["status"] == "failed" and train["unet"]["status"] == "ok"
    error = train["pan"]["error"]  # torch's own error, raised in a worker, recorded in one line
    assert error.startswith("RuntimeError: ") and "too small" in error and len(error.splitlines()) == 1
    assert {r["model"] for r in result.results["runs"]} == {"unet"}
    assert all(r["status"] == "ok" for r in result.results["runs"] + result.results["inference"])
    assert result.results["inference"][0]["composition_mae"] is not None
    assert (root / "local" / "report.html").is_file()


def test_rerun_skips_finished_cells_and_retries_only_what_is_missing(runs):
    root, _ = runs
    out = root / "local"
    before = {k: (kind, s, r) for k, (kind, s, r) in rows(out).items()}
    db = sqlite3.connect(out / "results.sqlite")
    finished = dict(db.execute("SELECT key, finished FROM runs"))
    dropped = next(k for k, (kind, _, _) in before.items() if kind == "attack")
    db.execute("DELETE FROM runs WHERE key = ?", (dropped,))
    db.commit()
    db.close()
    local = sweep.LocalExecutor(max_parallel=2)
    with local:
        audit.run(grid(), out, progress=False, executor=local)
    db = sqlite3.connect(out / "results.sqlite")
    after = dict(db.execute("SELECT key, finished FROM runs"))
    db.close()
    rerun = {k for k in after if after[k] != finished.get(k)}
    failed = {k for k, (_, _, r) in before.items() if r["status"] == "failed"}
    assert rerun == {dropped} | failed  # the missing cell and the failed one (failures are retried), nothing else
    assert without_runtime(rows(out)) == without_runtime(before)
    # everything finished: a rerun starts no worker at all
    idle = sweep.LocalExecutor(max_parallel=2)
    with idle:
        audit.run(grid(models=(UNET,)), out, progress=False, executor=idle, extend=True)
        assert not idle.started


def test_cli_sweep_extends_a_finished_grid(runs, tmp_path, capsys):
    import shutil

    import yaml

    root, _ = runs
    shutil.copytree(root / "sequential", tmp_path / "s")
    config = tmp_path / "grid.yaml"  # one more seed: only its attack cell runs
    config.write_text(yaml.safe_dump(grid(models=(UNET,), seeds=(0, 1, 2)).to_dict()))
    before = rows(tmp_path / "s")
    assert main(["--quiet", "sweep", str(config), "--executor", "local", "--max-parallel", "1", "--threads", "1",
                 "--out", str(tmp_path / "s")]) == 0
    assert "5 cells, 1 run now, 0 failed, 0 left out" in capsys.readouterr().out  # training, 3 attacks, inference
    after = rows(tmp_path / "s")
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == len(before) + 1
    for args, message in ((["--max-parallel", "0"], "--max-parallel must be at least 1"),
                          (["--address", "auto"], "--address is for the ray executor"),
                          (["--executor", "dask"], "invalid choice")):
        assert main(["sweep", str(config), *args, "--out", str(tmp_path / "x")]) == 2
        assert not (tmp_path / "x").exists()
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SegauditError, match=r"pip install 'segaudit\[ray\]'"):
        sweep.RayExecutor().start()


def test_ctrl_c_stops_a_pool_sweep_leaving_whole_rows(runs, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import time

    import yaml

    root, _ = runs
    out = tmp_path / "cut"
    shutil.copytree(root / "sequential", out)  # the model is trained: the sweep starts with attack cells
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(grid(models=(UNET,), seeds=tuple(range(12)), attack_steps=20).to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "segaudit.cli", "--quiet", "sweep", str(config), "--out", str(out),
                             "--max-parallel", "1", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(rows(out)) < len(rows(root / "sequential")) + 1:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: driver and workers
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err
    db = sqlite3.connect(out / "results.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    attack = [r for r in ResultsStore(out / "results.sqlite").runs("attack")]
    assert 3 <= len(attack) < 12 + 1 and all(r["status"] == "ok" for r in attack)
    assert all((out / r["artefacts"]["grid"]).is_file() for r in attack)
    # a row kept from the interrupted sweep is the row an uninterrupted run computes (so resuming gives its result)
    key, (kind, settings, result) = next((k, v) for k, v in rows(out).items()
                                         if v[0] == "attack" and v[1]["steps"] == 20)
    cell = audit.Cell.of(kind, settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's worker (--threads 1)
    try:
        fresh = audit.run_cell(cell, audit.make_job(grid(models=(UNET,), seeds=tuple(range(12)), attack_steps=20), out))
    finally:
        torch.set_num_threads(threads)
    assert cell.key == key and without_runtime(json.loads(json.dumps(fresh["result"]))) == without_runtime(result)
    assert fresh["files"][result["artefacts"]["grid"]] == (out / result["artefacts"]["grid"]).read_bytes()
