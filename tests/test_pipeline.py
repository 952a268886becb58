"""`dgm-dist pipeline` end to end on tiny data: three real Tune studies (Ray, MLflow on sqlite), the
best classifiers exported, validated by ONNX Runtime and registered, and the report. (The README's
quick preset is the same code on Fashion-MNIST; this is its small version for CI.)"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from formats import write_mnist_dir

from dgm_dist.cli import main

pytestmark = pytest.mark.slow      # starts Ray, Tune, exports or benchmarks: not in `make test-fast`

TINY_SEQUENCES = {"data.cluttered.n_train": 100, "data.cluttered.n_valid": 30, "data.cluttered.n_test": 70,
                  "data.cluttered.valid_digits": 100, "data.cluttered.clutter_pool": 500}


def study(tmp_path: Path, name: str, base: str, fixed: dict, parameters: dict, report: dict,
          metric: str | None = None) -> str:
    doc = {"study": name, "base": base, "set": {"optim.epochs": 1, "optim.batch_size": 25, **fixed},
           "parameters": parameters, "scheduler": {"type": "fifo"}, "concurrent": 2,
           "resources": {"workers": 1, "cpus_per_worker": 1}, "report": report}
    if metric:
        doc["metric"] = metric
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("data") / "mnist", n_train=300, n_test=80)


def test_the_pipeline_runs_studies_exports_validates_registers_and_reports(tmp_path, data_dir, capsys):
    """Interrupted (Ctrl-C) inside its second study, then resumed by name: the first family is kept,
    the second study resumes from Tune's state, the third runs; one MLflow run throughout."""
    mnist = {"data.dataset": "mnist", "data.data_dir": str(data_dir), "data.validation": 100}
    files = {
        "ssl": study(tmp_path, "tiny_ssl", "adgm", {**mnist, "data.labels": 100, "model.hidden": [16],
                                                      "model.latent": [4], "model.aux": 4, "model.eval_samples": 5},
                     {"model.name": {"grid": ["adgm", "sdgm"]}}, {"x": "model.name", "y": "test_error"}),
        "lvae": study(tmp_path, "tiny_lvae", "lvae", {**mnist, "model.hidden": [8, 8], "model.latent": [4, 2],
                                                        "model.iw_samples": 2, "optim.epochs": 2},
                      {"optim.warmup_epochs": {"grid": [0]}}, {"x": "optim.warmup_epochs", "y": "test_iw_ll"},
                      metric="valid_iw_ll"),
        "spn": study(tmp_path, "tiny_spn", "cnn_spn", {"data.dataset": "cluttered-mnist", "data.data_dir":
                                                         str(data_dir), **TINY_SEQUENCES, "model.channels": [4, 4, 4],
                                                         "model.hidden": [16], "model.loc_channels": [4, 4, 4],
                                                         "model.loc_hidden": 8},
                     {"model.downsample": {"grid": [2, 3]}}, {"x": "model.downsample", "y": "test_per_digit_error"}),
    }
    root = tmp_path / "runs"
    args = ["pipeline", "--set", f"tracking.root={root}"]
    for family, path in files.items():
        args += ["--study-file", f"{family}={path}"]
    proc = subprocess.Popen([sys.executable, "-m", "dgm_dist.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, in_lvae = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            in_lvae = in_lvae or line.startswith("[lvae] study")
            if in_lvae and line.startswith("trial ") and " epoch 1:" in line:
                proc.send_signal(signal.SIGINT)           # Ctrl-C inside the lvae study, its first trial half done
                in_lvae = False
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    assert proc.returncode != 0 and "[lvae] study" in text, text[-3000:]
    found = re.search(r"dgm-dist pipeline --resume (pipeline-quick-[0-9-]+) --set tracking.root=", text)
    assert found, text[-4000:]
    name = found.group(1)
    first_run = re.search(rf"{name}: .*MLflow run ([0-9a-f]+)", text).group(1)

    code = main(["pipeline", "--resume", name, "--set", f"tracking.root={root}", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "[ssl] study tiny_ssl-" in captured.err and "finished earlier, kept" in captured.err
    assert re.search(r"\[lvae\] study tiny_lvae-\S+: 1 trials \(resumed\)", captured.err), captured.err[-3000:]
    summary = json.loads(captured.out)
    assert summary["passed"] and summary["mlflow_run_id"] == first_run                  # one pipeline run
    rows = {r["family"]: r for r in summary["families"]}
    assert list(rows) == ["ssl", "lvae", "spn"] and all(r["trials"] >= 1 for r in rows.values())
    for family in ("ssl", "spn"):                           # the classifiers: exported, validated, registered
        r = rows[family]
        assert r["validated"] and Path(r["onnx"]).is_file() and r["ort_speedup_batch_1"] > 0
        name, version = r["registered"].split(" v")
        client = mlflow.MlflowClient(summary["tracking_uri"])
        assert str(client.get_model_version_by_alias(name, "champion").version) == version == "1"  # exported once
    assert "onnx" not in rows["lvae"] and rows["lvae"]["test_metric"] == "test_iw_ll"

    report = Path(summary["report"])
    text = report.read_text()
    assert "| family | study |" in text and all(f"## {f}:" in text for f in files)
    assert "Best trial" in text and "PASS" in text and (report.parent / "spn.png").is_file()
    run = mlflow.MlflowClient(summary["tracking_uri"]).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "ssl_best_valid_error" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient(summary["tracking_uri"]).list_artifacts(run.info.run_id, "report")}
    assert "report/report.md" in artifacts and "report/spn.png" in artifacts


def test_the_pipeline_refuses_an_unknown_family_before_anything_runs(capsys, tmp_path):
    assert main(["pipeline", "--models", "ssl,gan", "--set", f"tracking.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "model family 'gan'" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()
