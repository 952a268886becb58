"""`dgm-dist train` in Ray Train's local mode (in-process): the loop, MLflow tracking on a real
sqlite store, exact resume, and the failures a user can cause. The multi-worker paths are in
test_train_ray.py."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import ray
import torch
from formats import write_mnist_dir

from dgm_dist.cli import main
from dgm_dist.config import Config, apply, load_config
from dgm_dist.data import load_from_config
from dgm_dist.models.mlp import MLPClassifier
from dgm_dist.models.registry import DataInfo, build_model
from dgm_dist.training import state
from dgm_dist.training.evaluation import evaluate_model

pytestmark = pytest.mark.slow      # every run goes through the engine (Ray Train's local mode)

CPUS = os.cpu_count()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")        # one MLflow database for the module: migrations once


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("data") / "mnist", n_train=600, n_test=130)


def _train(capsys, root, data_dir, *extra):
    args = ["train", "mlp", "--dataset", "mnist", "--data-dir", str(data_dir), "--workers", "0", "--json",
            "--set", f"tracking.root={root}", "--set", "data.validation=100", "--set", "model.hidden=32",
            "--set", "optim.batch_size=50", "--set", "optim.lr=1e-3", *extra]
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _client(root):
    return mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")


def test_local_run_is_tracked_and_evaluated_on_the_full_sets(capsys, root, data_dir):
    code, summary, err = _train(capsys, root, data_dir, "--epochs", "2")
    assert code == 0, err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "ex/s" in err        # progress lines
    m = summary["metrics"]
    assert m["epoch"] == 2 and {"train_loss", "valid_error", "valid_nll", "test_error", "test_nll"} <= set(m)

    client = _client(root)
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.batch_size"] == "50" and run.data.params["model.name"] == "mlp"
    assert [h.step for h in client.get_metric_history(run.info.run_id, "valid_error")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for d in ("figures", "checkpoint") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"learning_curve.png", "figures/test_predictions.png", "checkpoint/state.pt", "config.yaml"} <= artifacts
    # the run's whole config beside its checkpoints, as YAML that --config reads back
    saved_cfg = load_config(yaml_path=Path(summary["checkpoint"]).parent / "config.yaml")
    assert (saved_cfg.model.hidden, saved_cfg.optim.batch_size, saved_cfg.data.dataset) == ((32,), 50, "mnist")

    # the reported test figures are those of the whole test set, recomputed here in one process
    saved = state.load(summary["checkpoint"])
    cfg = apply(Config(), saved["extra"]["config"], origin="checkpoint")
    model = build_model(cfg.model, DataInfo(**saved["extra"]["data_info"]))
    model.load_state_dict(saved["model"])
    x, y = load_from_config(cfg.data).split("test")
    assert len(x) == 130
    sums = evaluate_model(model.eval(), torch.from_numpy(x), torch.from_numpy(y.astype("int64")), batch_size=500)
    assert sums == {"error": m["test_error"], "nll": m["test_nll"]}               # exactly


def test_same_run_name_resumes_exactly(capsys, root, data_dir):
    noisy = ["--set", "data.binarize=dynamic", "--set", "model.dropout=0.3", "--set", "scaling.checkpoint_every=1"]
    code, full, err = _train(capsys, root, data_dir, "--epochs", "3", "--run-name", "whole", *noisy)
    assert code == 0, err
    code, first, err = _train(capsys, root, data_dir, "--epochs", "1", "--run-name", "parts", *noisy)
    assert code == 0, err
    code, resumed, err = _train(capsys, root, data_dir, "--epochs", "3", "--run-name", "parts", *noisy)
    assert code == 0, err
    assert "epoch 1/3" not in err and "epoch 2/3" in err                        # started at epoch 2
    client = _client(root)                                                      # one MLflow run, one series
    assert resumed["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    assert [m.step for m in client.get_metric_history(resumed["mlflow"]["run_id"], "train_loss")] == [1, 2, 3]
    run = client.get_run(resumed["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["optim.epochs"] == "1"
    assert run.data.tags["dgm.resumed_with.optim.epochs"] == "3"
    a, b = state.load(full["checkpoint"]), state.load(resumed["checkpoint"])
    assert a["global_step"] == b["global_step"] == 3 * 10
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k                       # bitwise
    assert {k: v for k, v in full["metrics"].items() if k not in ("epoch_seconds", "throughput")} == \
        {k: v for k, v in resumed["metrics"].items() if k not in ("epoch_seconds", "throughput")}


def test_a_finished_run_run_again_by_name_reports_its_result_without_training(capsys, root, data_dir):
    code, done, err = _train(capsys, root, data_dir, "--epochs", "2", "--run-name", "finished")
    assert code == 0, err
    code, again, err = _train(capsys, root, data_dir, "--epochs", "2", "--run-name", "finished")
    assert code == 0, err                      # was: shutil.Error, the checkpoint copied onto itself
    assert "epoch 1/2" not in err and err.count("epoch 2/2") == 1     # the final report again, no training
    assert {k: v for k, v in done["metrics"].items() if k not in ("epoch_seconds", "throughput")} == \
        {k: v for k, v in again["metrics"].items() if k not in ("epoch_seconds", "throughput")}


def _diverge_at_step(monkeypatch, step: int) -> None:
    """The MLP's loss becomes NaN at its `step`-th call (1-based)."""
    calls = {"n": 0}
    real = MLPClassifier.loss

    def loss_that_diverges(self, x, y):
        calls["n"] += 1
        loss, terms = real(self, x, y)
        return (loss * float("nan"), terms) if calls["n"] == step else (loss, terms)

    monkeypatch.setattr(MLPClassifier, "forward", loss_that_diverges)


def test_nonfinite_loss_stops_with_one_clear_error(capsys, root, data_dir, monkeypatch):
    _diverge_at_step(monkeypatch, 13)                                             # epoch 2, step 3
    code, _, err = _train(capsys, root, data_dir, "--epochs", "3", "--run-name", "diverges")
    assert code == 2 and "Traceback" not in err
    assert "non-finite loss at epoch 2, step 13: loss=nan" in err and "nll_sum=" in err
    assert "checkpoint_epoch=000001" in err                                       # the last good one
    run = _client(root).search_runs([_client(root).get_experiment_by_name("dgm-dist").experiment_id],
                                    "attributes.run_name = 'diverges'")[0]
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["dgm.error"]


def test_with_checks_every_few_steps_a_nonfinite_loss_still_stops_before_any_checkpoint(
        capsys, root, data_dir, monkeypatch):
    """GPU runs agree on finiteness every 50 steps, not every step (no host sync per step): the run
    still stops, names the range of steps, and writes no checkpoint of the non-finite model."""
    from dgm_dist.training import launcher

    _diverge_at_step(monkeypatch, 13)                                             # epoch 2, step 3
    monkeypatch.setattr(launcher, "check_every", lambda cfg: 4)
    code, _, err = _train(capsys, root, data_dir, "--epochs", "3", "--run-name", "diverges-late")
    assert code == 2 and "Traceback" not in err
    assert "non-finite loss at epoch 2, one of steps 11-14" in err, err    # checks after steps 14, 18, 20
    assert "checkpoint_epoch=000001" in err and "checkpoint_epoch=000002" not in err


def test_unreachable_tracking_server_is_reported_before_training(capsys, root, data_dir, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                  # nothing listens there once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    code, _, err = _train(capsys, root, data_dir, "--epochs", "1")
    assert code == 2 and f"MLflow tracking server http://127.0.0.1:{port} cannot be reached" in err
    assert "mlflow server" in err and "epoch" not in err


@pytest.mark.parametrize("extra, message", [
    (["--workers", "-1"], "scaling.workers=-1 is out of range"),
    (["--workers", "1", "--gpus"], "needs 1 GPUs; this machine has 0"),
    (["--workers", str(2 * CPUS), "--set", f"optim.batch_size={10 * CPUS}"], f"needs {2 * CPUS} CPUs"),
    (["--workers", "2", "--set", "optim.batch_size=75"], "must be divisible by the number of workers"),
    (["--set", "model.name=cnn"], "classifies digit sequences"),
    (["--set", "model.name=rnn_spn"], "model.name=rnn_spn classifies digit sequences"),
    (["--set", "optim.patience=-1"], "optim.patience=-1 is out of range"),
    (["--set", "model.hidden=1000000,1000000"], "parameters: its weights, gradients and adam state need"),
    (["--set", "model.hidden=0"], "model.hidden='0' is not valid: expected sizes >= 1"),
    (["--set", "optim.lr=nan"], "expected a finite number"),
])
def test_invalid_config_fails_before_ray_starts(capsys, root, data_dir, extra, message):
    code, _, err = _train(capsys, root, data_dir, "--epochs", "1", *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not ray.is_initialized()


def test_unknown_model_or_preset(capsys):
    assert main(["train", "nosuch"]) == 2
    assert "unknown model or preset 'nosuch'" in capsys.readouterr().err


def test_monitor_logs_each_epoch_once_and_estimates_time():
    from dgm_dist.training.progress import RunMonitor

    logged, lines = [], []
    monitor = RunMonitor(4, started=0.0, log=lambda e, m: logged.append(e), out=lines.append)
    for epoch in (1, 2, 3, 2, 3, 4):             # a restart from the epoch-1 checkpoint replays 2 and 3
        monitor({"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch, "valid_error": 0.5,
                 "throughput": 1000.0, "epoch_seconds": 0.1}, f"ckpt{epoch}" if epoch % 2 == 0 else None)
    assert logged == [1, 2, 3, 4] and monitor.replayed == [2, 3] and monitor.latest_checkpoint == "ckpt4"
    assert lines[0].startswith("epoch 1/4  step      10  train_loss 1.0000  valid_error 50.00%  1,000 ex/s  eta")
    assert sum("re-run after a restart" in line for line in lines) == 2


def test_sequence_cnn_trains_on_cluttered_sequences(capsys, root, data_dir):
    code = main(["train", "cnn", "--dataset", "cluttered-mnist", "--data-dir", str(data_dir), "--workers", "0",
                 "--epochs", "1", "--json", "--set", f"tracking.root={root}", "--set", "model.channels=4,4,4",
                 "--set", "model.hidden=16", "--set", "optim.batch_size=25",
                 *[f"--set=data.cluttered.{k}={v}" for k, v in
                   {"n_train": 100, "n_valid": 30, "n_test": 40, "valid_digits": 100, "clutter_pool": 500}.items()]])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    m = summary["metrics"]
    assert {"test_per_digit_error", "test_sequence_error", "valid_per_digit_error"} <= set(m)
    assert m["test_per_digit_error"] <= m["test_sequence_error"] <= 1.0
    assert m["test_sequence_error"] * 40 == pytest.approx(round(m["test_sequence_error"] * 40))   # k / 40: all 40
    figures = _client(root).list_artifacts(summary["mlflow"]["run_id"], "figures")
    assert [f.path for f in figures] == ["figures/confusion_matrix.png", "figures/test_predictions.png"]


def test_a_stopped_run_ends_failed_not_running(root, data_dir):
    """SIGTERM (a scheduler stopping the job) mid-run: the process exits 130 and MLflow's run is
    FAILED with a tag saying why, never left RUNNING."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgm_dist.cli", "train", "mlp", "--dataset", "mnist", "--data-dir", str(data_dir),
         "--workers", "0", "--epochs", "100000", "--run-name", "stopped", "--set", f"tracking.root={root}",
         "--set", "data.validation=100", "--set", "model.hidden=8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        for line in proc.stdout:
            if line.split()[:2] == ["epoch", "2/100000"]:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:       # never leave a runaway trainer behind a failed assertion
            proc.kill()
    assert proc.returncode == 130 and "dgm-dist: interrupted" in rest and "Traceback" not in rest
    client = _client(root)
    run = client.search_runs([client.get_experiment_by_name("dgm-dist").experiment_id],
                             "attributes.run_name = 'stopped'")[0]
    assert run.info.status == "FAILED" and "SIGTERM" in run.data.tags["dgm.stopped"]


def _ssl_args(root, data_dir, model="adgm"):
    return ["train", f"{model}-mnist100-cpu", "--dataset", "mnist", "--data-dir", str(data_dir), "--workers", "0",
            "--labels", "20", "--json", "--set", f"tracking.root={root}", "--set", "data.validation=100",
            "--set", "model.hidden=16,16", "--set", "model.latent=4", "--set", "model.aux=4",
            "--set", "model.eval_samples=3", "--set", "optim.batch_size=50", "--set", "optim.labelled_batch_size=20"]


def test_semi_supervised_run_through_the_engine(capsys, root, data_dir):
    code = main(_ssl_args(root, data_dir) + ["--epochs", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads(out)
    assert s["epochs"] == 2 and s["steps"] == 2 * 10 and s["labels"] == 20 and not s["stopped_at_budget"]
    assert 0 <= s["test_error"] <= 1 and s["examples_per_s"] > 0
    assert {"train_labelled_elbo", "train_unlabelled_elbo", "train_classification"} <= set(s["metrics"])
    figures = {f.path for f in _client(root).list_artifacts(s["mlflow_run_id"], "figures")}
    assert figures == {"figures/test_predictions.png", "figures/samples_by_class.png", "figures/reconstructions.png"}


def test_max_minutes_stops_after_a_final_full_evaluation(capsys, root, data_dir):
    code = main(_ssl_args(root, data_dir, "sdgm") + ["--epochs", "50", "--max-minutes", "0.0001"])
    out, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads(out)
    assert s["stopped_at_budget"] and s["epochs"] == 1 and s["steps"] == 1      # the budget ran out at once
    assert {"test_error", "valid_error", "test_nll"} <= set(s["metrics"]) and s["checkpoint"]
    assert state.load(s["checkpoint"])["global_step"] == 1


def test_report_every_groups_short_epochs(capsys, root, data_dir):
    code, s, err = _train(capsys, root, data_dir, "--epochs", "5", "--set", "scaling.report_every=2",
                          "--set", "scaling.checkpoint_every=5")
    assert code == 0, err
    assert [h.step for h in _client(root).get_metric_history(s["mlflow"]["run_id"], "train_loss")] == [2, 4, 5]
    assert "test_error" in s["metrics"] and s["metrics"]["step"] == 50


def test_ladder_vae_run_then_offline_evaluation(capsys, root, data_dir):
    code = main(["train", "lvae", "--dataset", "mnist", "--data-dir", str(data_dir), "--workers", "0", "--epochs", "2",
                 "--run-name", "ladder", "--json", "--set", f"tracking.root={root}", "--set", "data.validation=100",
                 "--set", "model.latent=4,2", "--set", "model.hidden=16,8", "--set", "model.batch_norm=full_train",
                 "--set", "model.iw_samples=5", "--set", "data.eval_binarize=true", "--set", "optim.warmup_epochs=1",
                 "--set", "optim.batch_size=50"])
    out, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads(out)
    m = s["metrics"]
    beta = [h.value for h in _client(root).get_metric_history(s["mlflow_run_id"], "train_kl_weight")]
    assert beta == pytest.approx([0.45, 1.0])               # warm-up over epoch 1's 10 steps: mean of 0/10..9/10
    assert {"test_elbo", "test_iw_ll", "test_active_units1", "test_active_units2", "test_kl_layer1"} <= set(m)
    assert len(m["test_kl_units1"]) == 4
    figures = {f.path for f in _client(root).list_artifacts(s["mlflow_run_id"], "figures")}
    assert {"figures/kl_per_unit.png", "figures/prior_samples.png", "figures/reconstructions.png"} <= figures

    code = main(["evaluate", "ladder", "--iw-samples", "50", "--json", "--set", f"tracking.root={root}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert r["metrics"]["iw_samples"] == 50 and r["examples"] == 130 and "evaluated 130/130 test examples" in err
    assert r["metrics"]["test_iw_ll"] > m["test_elbo"]                       # k = 50 vs one sample
    logged = _client(root).get_run(s["mlflow_run_id"]).data.metrics
    assert logged["test_iw_ll_k50"] == pytest.approx(r["metrics"]["test_iw_ll"])

    # a part of the split: its own metric name, so it is never read as the whole test set's figure
    code = main(["evaluate", "ladder", "--iw-samples", "50", "--examples", "40", "--json",
                 "--set", f"tracking.root={root}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    part = json.loads(out)
    assert (part["examples"], part["split_size"]) == (40, 130) and "evaluated 40/40 test examples" in err
    logged = _client(root).get_run(s["mlflow_run_id"]).data.metrics
    assert logged["test_iw_ll_k50_n40"] == pytest.approx(part["metrics"]["test_iw_ll"])
    assert logged["test_iw_ll_k50"] == pytest.approx(r["metrics"]["test_iw_ll"])     # untouched


def test_evaluate_refuses_what_does_not_apply(capsys, root):
    assert main(["evaluate", "no-such-run", "--set", f"tracking.root={root}"]) == 2
    assert "no checkpoint found for 'no-such-run'" in capsys.readouterr().err
