"""`dgm-dist export` and `dgm-dist validate`: every classifier kind trained for a few steps on tiny
data (so its outputs are not tied), exported, and checked against PyTorch by real ONNX Runtime;
INT8; the model card; the MLflow registry and its `champion` alias."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from formats import write_idx

from dgm_dist.cli import main
from dgm_dist.config import Config, apply
from dgm_dist.export.graphs import GraphOptions, build_graph, run_graph
from dgm_dist.export.onnx_file import read_metadata
from dgm_dist.export.registry import fluent_uri
from dgm_dist.models.registry import DataInfo, build_model
from dgm_predict.card import from_metadata

# slow: not in `make test-fast`; one xdist group: the module's fixtures (every kind trained and
# exported, the edge venv) are built once, on one of `make test`'s processes
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]

SEQUENCE = {"n_train": 100, "n_valid": 30, "n_test": 70, "valid_digits": 100, "clutter_pool": 500}
TINY = {
    "mlp": ["--set", "model.hidden=32", "--set", "optim.lr=3e-3", "--set", "data.binarize=none"],
    "m2": ["--labels", "100", "--set", "model.hidden=16", "--set", "model.latent=4"],
    "adgm": ["--labels", "100", "--set", "model.hidden=16,16", "--set", "model.latent=4", "--set", "model.aux=4",
             "--set", "model.batch_norm=running"],
    "sdgm": ["--labels", "100", "--set", "model.hidden=16", "--set", "model.latent=4", "--set", "model.aux=4"],
    "cnn": ["--set", "model.channels=4,4,4", "--set", "model.hidden=16", "--set", "model.downsample=2"],
    "cnn_spn": ["--set", "model.channels=4,4,4", "--set", "model.hidden=16", "--set", "model.downsample=2",
                "--set", "model.loc_channels=4,4,4", "--set", "model.loc_hidden=8"],
    "rnn_spn": ["--set", "model.channels=4,4,4", "--set", "model.hidden=16", "--set", "model.downsample=3",
                "--set", "model.loc_channels=4,4,4", "--set", "model.loc_hidden=8"],
}
SEQUENCE_MODELS = ("cnn", "cnn_spn", "rnn_spn")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 'digits' a small model learns in a few steps: class c is a bright bar in rows 2c+4..2c+5,
    on noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 10).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(y):
        x[i, 2 * c + 4:2 * c + 6, 4:24] = 230
    return x, y


def write_bars(directory, test_seed: int = 1):
    directory.mkdir()
    for prefix, n, seed in (("train", 600, 0), ("t10k", 130, test_seed)):
        x, y = bars(n, seed)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", x)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", y)
    return directory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """IDX files of learnable 'digits' (600 train, 130 test): INT8 damage must show in accuracy."""
    return write_bars(tmp_path_factory.mktemp("data") / "mnist")


def run(capsys, *args):
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.fixture(scope="module")
def trained(root, data_dir, tmp_path_factory):
    """One tiny finished run per classifier kind: name -> run name (trained once for the module)."""
    cache = tmp_path_factory.mktemp("cache")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DGM_CACHE_DIR", str(cache))
        for name, extra in TINY.items():
            dataset = "cluttered-mnist" if name in SEQUENCE_MODELS else "mnist"
            sequence = [f"--set=data.cluttered.{k}={v}" for k, v in SEQUENCE.items()] if name in SEQUENCE_MODELS \
                else ["--set", "data.validation=100"]
            args = ["train", name, "--dataset", dataset, "--data-dir", str(data_dir), "--workers", "0", "--epochs",
                    "1", "--run-name", f"tiny-{name}", "--set", f"tracking.root={root}", "--set",
                    "optim.batch_size=25", *sequence, *extra, "--json"]
            assert main(args) == 0, name
            runs[name] = f"tiny-{name}"
    return runs, cache


@pytest.fixture
def shared_cache(trained, monkeypatch):
    monkeypatch.setenv("DGM_CACHE_DIR", str(trained[1]))
    return trained[0]


@pytest.fixture(scope="module")
def every_kind(trained, root, data_dir):
    """Each kind exported once for the module: name -> (exit status, --json summary, stderr)."""
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DGM_CACHE_DIR", str(trained[1]))
        for name, run_name in trained[0].items():
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["export", run_name, "--set", f"tracking.root={root}", "--data-dir", str(data_dir),
                             "--no-register", "--json"])
            done[name] = code, (json.loads(out.getvalue()) if code == 0 else None), err.getvalue()
    return done


@pytest.mark.parametrize("name", list(TINY))
def test_every_classifier_kind_exports_and_matches_pytorch(name, every_kind, shared_cache, data_dir, capsys):
    code, summary, err = every_kind[name]
    assert code == 0, err
    path = summary["files"][0]
    assert summary["parity_max_abs_diff"] <= 1e-5
    code, result, err = run(capsys, "validate", path, "--data-dir", str(data_dir), "--no-latency")
    assert code == 0 and result["passed"], err
    parity = next(c for c in result["checks"] if c["check"].startswith("ORT = PyTorch"))
    assert [r["batch"] for r in parity["rows"]] == [1, 7, 64]                       # the dynamic batch axis
    assert all(d <= 1e-5 for r in parity["rows"] for d in r["max_abs_diff"].values())
    assert result["test_metrics"]["onnxruntime"] == result["test_metrics"]["pytorch"]
    assert result["test_examples"] == (70 if name in SEQUENCE_MODELS else 130)     # the full test set

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (5, *sess.get_inputs()[0].shape[1:]), dtype=np.uint8)
    outputs = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"pixels": pixels}), strict=True)}
    log_probs = outputs["log_probs"]
    assert log_probs.shape == ((5, 3, 10) if name in SEQUENCE_MODELS else (5, 10))
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1, atol=1e-5)
    assert np.ptp(log_probs, axis=-1).min() > 1e-3                                  # trained: not tied
    if name in ("cnn_spn", "rnn_spn"):
        assert outputs["theta"].shape == (5, 1 if name == "cnn_spn" else 3, 2, 3)
    else:
        assert set(outputs) == {"log_probs"}


def test_the_card_round_trips_through_the_onnx_metadata(shared_cache, root, data_dir, capsys, tmp_path):
    code, summary, err = run(capsys, "export", shared_cache["rnn_spn"], "--set", f"tracking.root={root}",
                             "--data-dir", str(data_dir), "--no-register", "--out", str(tmp_path / "rnn"))
    assert code == 0, err
    card = json.loads((tmp_path / "rnn" / "model_card.json").read_text())
    assert from_metadata(read_metadata(tmp_path / "rnn" / "model.onnx")) == card
    assert card["input"] == {"name": "pixels", "dtype": "uint8", "shape": ["batch", 100, 100]}
    assert [o["name"] for o in card["outputs"]] == ["log_probs", "theta"]
    assert card["classes"] == [str(d) for d in range(10)] and card["task"] == "sequence"
    assert card["dataset"] == "cluttered-mnist" and card["model"] == "rnn_spn" and "/ 255" in card["preprocessing"]
    assert card["test_metrics"] == summary["test_metrics"] and set(card["test_metrics"]) == {"per_digit_error",
                                                                                             "sequence_error"}
    assert card["source"]["checkpoint"] == summary["checkpoint"] and card["source"]["mlflow_run_id"]
    props = read_metadata(tmp_path / "rnn" / "model.onnx")
    assert props["dgm.model"] == "rnn_spn" and json.loads(props["dgm.classes"]) == card["classes"]


def _adgm(**changes):
    cfg = apply(Config(), {"model": {"name": "adgm", "hidden": [16], "latent": [4], "aux": 4, **changes}}, "test")
    torch.manual_seed(0)
    model = build_model(cfg.model, DataInfo((28, 28), 10, None, 100, 10)).eval()
    for p in model.parameters():
        p.data += 0.3 * torch.randn_like(p)          # an untrained model has near-tied outputs
    return model


class _ToyClassifier(torch.nn.Module):
    """A classifier the framework has never seen, written against models/interface.py only."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 10))

    def classify(self, x):
        return torch.log_softmax(self.net(x), -1)

    def forward(self, x, y):
        nll = torch.nn.functional.nll_loss(self.classify(x), y, reduction="none")
        return nll.mean(), {"nll_sum": nll.detach().double().sum()}

    def eval_sums(self, x, y):
        return self.forward(x, y)[1]

    def inference(self, options):
        from dgm_dist.models.interface import Classify

        return Classify(self)


def test_a_new_classifier_exports_through_its_interface_alone(tmp_path):
    """Export knows no model class: a classifier that implements the interface exports to ONNX and
    ONNX Runtime computes what PyTorch does, with no change to dgm_dist/export/."""
    import onnxruntime as ort

    from dgm_dist.export.onnx_file import export_graph
    from dgm_dist.models.interface import Classifier

    torch.manual_seed(0)
    model = _ToyClassifier().eval()
    assert isinstance(model, Classifier)
    graph = build_graph(model)
    pixels = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    path = export_graph(graph, pixels, tmp_path / "toy.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    np.testing.assert_allclose(got, run_graph(graph, pixels)[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="not a classifier"):
        build_graph(torch.nn.Linear(2, 2))


class _RegisteredToy(_ToyClassifier):
    def forward(self, x, y):
        logp = self.classify(x)
        nll = torch.nn.functional.nll_loss(logp, y, reduction="none")
        return nll.mean(), {"nll_sum": nll.detach().double().sum(), "error_sum": (logp.argmax(-1) != y).sum()}


def test_a_registered_classifier_trains_evaluates_and_exports_with_no_other_change(root, data_dir, capsys,
                                                                                    tmp_path):
    """A model family is its module and one registry entry: `register`, then `dgm-dist train`,
    `export` and `validate` take it by name (in-process: Ray workers would import the registering
    module themselves)."""
    from dgm_dist.models import registry

    spec = registry.ModelSpec(lambda m, info: _RegisteredToy(), "supervised", "single", "error", "a toy")
    registry.register("toy", spec)
    try:
        code, trained, err = run(capsys, "train", "toy", "--dataset", "mnist", "--data-dir", str(data_dir),
                                 "--workers", "0", "--epochs", "2", "--run-name", "toy-run", "--set",
                                 f"tracking.root={root}", "--set", "data.validation=100", "--set", "data.binarize=none",
                                 "--set", "optim.lr=3e-3")
        assert code == 0 and trained["test_error"] < 0.5, err                     # it learnt the bars
        code, exported, err = run(capsys, "export", "toy-run", "--set", f"tracking.root={root}", "--data-dir",
                                  str(data_dir), "--no-register", "--out", str(tmp_path / "toy"))
        assert code == 0 and exported["model"] == "toy" and exported["parity_max_abs_diff"] <= 1e-5, err
        code, result, err = run(capsys, "validate", exported["files"][0], "--data-dir", str(data_dir), "--no-latency")
        assert code == 0 and result["passed"], err
    finally:
        registry.MODELS.pop("toy")
        registry.MODEL_NAMES.remove("toy")
    with pytest.raises(ValueError, match="registered already"):
        registry.register("mlp", spec)


def test_the_dgm_graph_fixes_the_draws_of_a_and_computes_the_papers_estimate():
    model = _adgm()
    pixels = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    x = pixels.float().flatten(1) / 255
    graph = build_graph(model, GraphOptions(aux="sample", samples=7, seed=3))
    out = run_graph(graph, pixels)[0]
    assert torch.equal(out, run_graph(build_graph(model, GraphOptions(aux="sample", samples=7, seed=3)), pixels)[0])
    # q(y|x) = mean over the S draws eps_s of q(y | a = mu + sigma * eps_s, x), the same draws for every example
    eps = torch.randn(7, 1, 4, generator=torch.Generator().manual_seed(3))
    mu, logvar = model.aux_posterior(x)
    probs = torch.stack([torch.softmax(model.class_logits(x, mu + torch.exp(0.5 * logvar) * e), -1) for e in eps])
    torch.testing.assert_close(out, probs.mean(0).log(), rtol=1e-5, atol=1e-6)
    # the mean variant is exactly the model's own deterministic prediction
    mean = run_graph(build_graph(model, GraphOptions(aux="mean")), pixels)[0]
    model.predict = "mean"
    torch.testing.assert_close(mean, model.classify(x))
    assert not torch.allclose(mean, out)


def test_int8_exports_are_checked_on_the_test_set(shared_cache, root, data_dir, capsys, tmp_path):
    for name in ("mlp", "cnn_spn"):            # dynamic (dense) and static QDQ (convolutional) quantization
        code, summary, err = run(capsys, "export", shared_cache[name], "--set", f"tracking.root={root}",
                                 "--data-dir", str(data_dir), "--no-register", "--quantize", "int8",
                                 "--out", str(tmp_path / name))
        assert code == 0, err
        assert [p.rsplit("/", 1)[1] for p in summary["files"]] == ["model.onnx", "model.int8.onnx"]
        int8 = tmp_path / name / "model.int8.onnx"
        ops = {n.op_type for n in __import__("onnx").load(str(int8)).graph.node}
        assert ("DynamicQuantizeLinear" if name == "mlp" else "QuantizeLinear") in ops
        assert int8.stat().st_size < (tmp_path / name / "model.onnx").stat().st_size
        code, result, err = run(capsys, "validate", str(int8), "--data-dir", str(data_dir), "--no-latency",
                                "--int8-max-drop", "100")
        assert code == 0 and result["passed"], err
        assert result["card"]["quantization"].startswith("int8")
        drop = next(c for c in result["checks"] if c["check"].startswith("INT8 test"))
        assert "points" in drop["detail"]


def test_an_int8_model_that_loses_accuracy_fails_validation(shared_cache, root, data_dir, capsys, tmp_path):
    """Calibrated on black images, the activation ranges are far too narrow: accuracy collapses, and
    validate says so with exit status 1."""
    from dgm_dist.export.onnx_file import set_card
    from dgm_dist.export.quantize import quantize_int8

    code, summary, err = run(capsys, "export", shared_cache["mlp"], "--set", f"tracking.root={root}",
                             "--data-dir", str(data_dir), "--no-register", "--out", str(tmp_path))
    assert code == 0, err
    card = json.loads((tmp_path / "model_card.json").read_text())
    bad = tmp_path / "bad.int8.onnx"
    quantize_int8(tmp_path / "model.onnx", bad, np.zeros((50, 28, 28), np.uint8))
    set_card(bad, dict(card, quantization="int8: static, calibrated on black images"))
    code, result, err = run(capsys, "validate", str(bad), "--data-dir", str(data_dir), "--no-latency",
                            "--int8-max-drop", "0.5")
    assert code == 1 and not result["passed"]
    drop = next(c for c in result["checks"] if c["check"].startswith("INT8 test"))
    assert not drop["passed"]


@pytest.mark.parametrize("name", ["adgm", "rnn_spn"])
def test_fp16_exports_hold_float16_weights_and_are_checked_against_a_stated_bound(name, shared_cache, root, data_dir,
                                                                                 capsys, tmp_path):
    import onnx

    code, summary, err = run(capsys, "export", shared_cache[name], "--set", f"tracking.root={root}", "--data-dir",
                             str(data_dir), "--no-register", "--half", "--out", str(tmp_path / name))
    assert code == 0, err
    assert [p.rsplit("/", 1)[1] for p in summary["files"]] == ["model.onnx", "model.fp16.onnx"]
    half = onnx.load(summary["files"][1])
    types = {i.data_type for i in half.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types                                  # the weights are float16
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8   # the input stays uint8
    card = from_metadata({p.key: p.value for p in half.metadata_props})
    assert card["quantization"].startswith("fp16") and card["parity"]["max_abs_diff"] <= 1e-2
    code, result, err = run(capsys, "validate", summary["files"][1], "--data-dir", str(data_dir), "--no-latency")
    assert code == 0 and result["passed"], err
    checks = {c["check"].split(" (")[0]: c for c in result["checks"]}
    assert "FP16 = fp32 PyTorch at batch 1/7/64" in checks and any(k.startswith("FP16 test") for k in checks)


def test_an_fp16_graph_that_crashes_onnx_runtime_gives_one_line_not_a_dead_process(shared_cache, exported, root,
                                                                                  data_dir, capsys, tmp_path,
                                                                                  monkeypatch):
    """ONNX Runtime 1.31.1 died of SIGSEGV creating a CPU session for an FP16 graph (docs/export.md):
    export, validate and dgm-predict load FP16 graphs in a child process first. The crash is
    simulated in the child (a real one cannot be had on demand); the rest is real."""
    import shutil
    import signal

    from dgm_predict import probe
    from dgm_predict.predict import main as dgm_predict

    real_child = probe._CHILD
    monkeypatch.setattr(probe, "_CHILD", f"import os; os.kill(os.getpid(), {int(signal.SIGSEGV)})")
    out_dir = tmp_path / "mlp"
    code, _, err = run(capsys, "export", shared_cache["mlp"], "--set", f"tracking.root={root}", "--data-dir",
                       str(data_dir), "--no-register", "--half", "--out", str(out_dir))
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("dgm-dist: error")]
    assert len(errors) == 1 and "crashed (SIGSEGV) loading it on CPUExecutionProvider" in errors[0], err
    assert (out_dir / "model.onnx").is_file() and not (out_dir / "model.fp16.onnx").exists()   # fp32 kept

    half = tmp_path / "model.fp16.onnx"                   # named as --half names it: probed by dgm-predict
    shutil.copy(exported["mlp"], half)
    np.save(tmp_path / "one.npy", np.zeros((1, 28, 28), np.uint8))
    assert dgm_predict([str(half), str(tmp_path / "one.npy")]) == 2
    err = capsys.readouterr().err
    assert "crashed (SIGSEGV)" in err and "use model.onnx (float32)" in err and "Traceback" not in err
    monkeypatch.setattr(probe, "_CHILD", real_child)      # the real probe: this graph loads, so it predicts
    assert dgm_predict([str(half), str(tmp_path / "one.npy")]) == 0


def test_a_static_batch_export_is_fed_that_many_everywhere(shared_cache, exported, root, data_dir, capsys,
                                                           tmp_path):
    """--static-batch 8: the graph takes exactly 8 images; export's checks, validate, dgm-predict
    and the bundle check all feed it 8 at a time (the last chunk padded), and agree with the
    dynamic export."""
    from dgm_predict.predict import main as dgm_predict

    code, summary, err = run(capsys, "export", shared_cache["rnn_spn"], "--set", f"tracking.root={root}",
                             "--data-dir", str(data_dir), "--no-register", "--static-batch", "8",
                             "--quantize", "int8", "--out", str(tmp_path / "static"))
    assert code == 0, err
    path = summary["files"][0]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == 8 and from_metadata(sess.get_modelmeta().custom_metadata_map)[
        "static_batch"] == 8
    code, result, err = run(capsys, "validate", path, "--data-dir", str(data_dir))
    assert code == 0 and result["passed"], err
    assert [r["batch"] for r in result["latency"]] == [8]
    assert result["test_metrics"]["onnxruntime"] == result["test_metrics"]["pytorch"]          # 70: 8 x 8 + 6
    # the INT8 file through the same 8-at-a-time path; its accuracy bound is not this test's subject
    # (a tiny model on 70 test images can lose more than 0.5 points to INT8: a CI run saw it)
    code, result8, err = run(capsys, "validate", summary["files"][1], "--data-dir", str(data_dir), "--no-latency",
                             "--int8-max-drop", "100")
    assert code == 0 and result8["test_examples"] == 70, err
    assert next(c for c in result8["checks"] if c["check"].startswith("INT8 test"))["passed"]
    pixels = np.random.default_rng(4).integers(0, 256, (3, 100, 100), dtype=np.uint8)
    np.save(tmp_path / "three.npy", pixels)
    assert dgm_predict([path, str(tmp_path / "three.npy"), "--json"]) == 0
    got = [r["prediction"] for r in json.loads(capsys.readouterr().out)["results"]]
    dynamic = ort.InferenceSession(str(exported["rnn_spn"]), providers=["CPUExecutionProvider"])
    classes = from_metadata(dynamic.get_modelmeta().custom_metadata_map)["classes"]
    want = dynamic.run(["log_probs"], {"pixels": pixels})[0].argmax(-1)                 # the same model, dynamic
    assert got == [[classes[c] for c in row] for row in want]
    assert dgm_predict([path, "--check", str(tmp_path / "static" / "test_bundle.npz"), "--seconds", "0.05"]) == 0
    assert "batch   8:" in capsys.readouterr().out
    code, _, err = run(capsys, "export", shared_cache["mlp"], "--static-batch", "0", "--no-register")
    assert code == 2 and "--static-batch must be in 1..65536" in err


def test_validate_times_both_runtimes_at_batch_1_and_64(shared_cache, root, data_dir, capsys, tmp_path):
    code, summary, err = run(capsys, "export", shared_cache["cnn"], "--set", f"tracking.root={root}",
                             "--data-dir", str(data_dir), "--no-register", "--out", str(tmp_path))
    assert code == 0, err
    code, result, err = run(capsys, "validate", summary["files"][0], "--data-dir", str(data_dir), "--threads", "1")
    assert code == 0, err
    assert [r["batch"] for r in result["latency"]] == [1, 64] and result["threads"] == 1
    assert all(r["onnxruntime_ms"] > 0 and r["pytorch_ms"] > 0 for r in result["latency"])
    assert result["providers"] == ["CPUExecutionProvider"]
    assert sum(result["placement"]["CPUExecutionProvider"].values()) > 5 and "Conv" in \
        result["placement"]["CPUExecutionProvider"]


def test_registry_versions_and_the_champion_alias(root, data_dir, capsys, shared_cache, tmp_path):
    """A worse model never takes `champion` from a better one; a better one does."""
    uri = f"sqlite:///{root}/mlflow.db"
    common = ["--set", f"tracking.root={root}", "--data-dir", str(data_dir)]
    worse = ["train", "mlp", "--dataset", "mnist", "--workers", "0", "--epochs", "1", "--run-name", "worse",
             "--set", "optim.lr=1e-9", "--set", "model.hidden=32", "--set", "data.validation=100", *common]
    assert run(capsys, *worse)[0] == 0
    results = []
    for source in ("worse", shared_cache["mlp"], "worse"):
        code, summary, err = run(capsys, "export", source, "--name", "mnist-mlp", "--out",
                                 str(tmp_path / f"{len(results)}"), *common)
        assert code == 0, err
        results.append(summary)
    assert "MLFLOW_TRACKING_URI" not in os.environ        # registering in-process leaks no global URI
    errors = [r["test_metrics"]["error"] for r in results]
    assert errors[1] < errors[0] == errors[2]
    assert [r["registered"][0]["version"] for r in results] == ["1", "2", "3"]
    assert [r["registered"][0]["champion"] for r in results] == [True, True, False]
    assert "its test error is as good or better" in results[2]["registered"][0]["champion_reason"]
    # a perfect model, but measured on another test set: not compared, the champion stays
    other = write_bars(tmp_path / "other-test", test_seed=5)
    assert run(capsys, "train", "mlp", "--dataset", "mnist", "--workers", "0", "--epochs", "1", "--run-name", "other",
               "--set", f"tracking.root={root}", "--data-dir", str(other), *TINY["mlp"],
               "--set", "data.validation=100")[0] == 0
    code, summary, err = run(capsys, "export", "other", "--name", "mnist-mlp", "--out", str(tmp_path / "o"),
                             "--set", f"tracking.root={root}")
    assert code == 0, err
    registered = summary["registered"][0]
    assert not registered["champion"] and "another test set" in registered["champion_reason"]
    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("mnist-mlp", "champion").version) == "2"
    with fluent_uri(uri):        # models:/ URIs resolve through MLflow's global URI: set, then put back
        proto = mlflow.onnx.load_model("models:/mnist-mlp@champion")
        info = mlflow.models.get_model_info("models:/mnist-mlp@champion")
    card = from_metadata({p.key: p.value for p in proto.metadata_props})
    assert card["source"]["checkpoint"] == results[1]["checkpoint"]
    assert info.signature.inputs.input_names() == ["pixels"] and info.saved_input_example_info is not None
    run_tags = client.get_run(results[1]["registered"][0]["run_id"]).data.tags
    assert run_tags["dgm.checkpoint"] == results[1]["checkpoint"]

    # from the registry to the device: the champion's files, then the device's own check of them
    code, fetched, err = run(capsys, "fetch", "mnist-mlp", "--out", str(tmp_path / "device"), *common[:2])
    assert code == 0 and fetched["version"] == "2" and fetched["bundle"], err
    assert sorted(p.name for p in (tmp_path / "device").iterdir()) == ["model.onnx", "model_card.json",
                                                                       "test_bundle.npz"]
    assert json.loads((tmp_path / "device" / "model_card.json").read_text())["source"]["checkpoint"] == \
        results[1]["checkpoint"]
    from dgm_predict.predict import main as dgm_predict

    assert dgm_predict([str(tmp_path / "device" / "model.onnx"), "--check", str(tmp_path / "device" /
                        "test_bundle.npz"), "--seconds", "0.05", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]
    code, _, err = run(capsys, "fetch", "models:/mnist-mlp@nobody", "--out", str(tmp_path / "x"), *common[:2])
    assert code == 2 and "models:/mnist-mlp@nobody: not in the registry" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["export"], "either a RUN"),
    (["export", "no-such-run"], "no checkpoint found for 'no-such-run'"),
    (["validate", "missing.onnx"], "no such file"),
])
def test_export_and_validate_refuse_bad_requests_in_one_line(args, message, capsys, root):
    code = main([*args, "--set", f"tracking.root={root}"] if args[0] == "export" else args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_export_refuses_a_generative_model(capsys, root, data_dir):
    args = ["train", "vae", "--dataset", "mnist", "--data-dir", str(data_dir), "--workers", "0", "--epochs", "1",
            "--run-name", "tiny-vae", "--set", f"tracking.root={root}", "--set", "model.hidden=8",
            "--set", "model.latent=2", "--set", "data.validation=100", "--set", "model.iw_samples=2"]
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, "export", "tiny-vae", "--set", f"tracking.root={root}", "--no-register")
    assert code == 2 and "not a classifier" in err and "Traceback" not in err


def test_validate_refuses_an_onnx_model_it_did_not_export(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    code = main(["validate", str(tmp_path / "other.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "not a dgm-dist export" in err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["validate", str(tmp_path / "junk.onnx")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err


# ---- the edge predictor ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(every_kind):
    """The exported files of every kind: name -> path."""
    return {name: Path(summary["files"][0]) for name, (_, summary, _) in every_kind.items()}


# torch, PIL, onnx and mlflow cannot be imported: the predictor must not need them
NO_TORCH = ("import sys, runpy\n"
            "for m in ('torch', 'PIL', 'onnx', 'mlflow', 'dgm_dist'): sys.modules[m] = None\n"
            "sys.argv = ['predict'] + sys.argv[1:]\n"
            "runpy.run_module('dgm_predict', run_name='__main__')\n")


def predict(*args):
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          cwd=root, timeout=120)


def test_the_predictor_runs_without_torch_and_agrees_with_the_model(exported, tmp_path):
    from formats import write_png

    x, y = bars(4, seed=7)
    write_png(tmp_path / "one.png", x[0])
    write_png(tmp_path / "rgb.png", np.repeat(x[1][..., None], 3, axis=-1))      # colour, converted to grey
    np.save(tmp_path / "batch.npy", x)
    done = predict(exported["mlp"], tmp_path / "one.png", tmp_path / "rgb.png", tmp_path / "batch.npy", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["input"] for r in results] == [f"{tmp_path}/one.png", f"{tmp_path}/rgb.png",
                                             *[f"{tmp_path}/batch.npy[{i}]" for i in range(4)]]
    sess = ort.InferenceSession(str(exported["mlp"]), providers=["CPUExecutionProvider"])
    expected = np.exp(sess.run(None, {"pixels": x})[0])
    for r, p in zip(results[2:], expected, strict=True):
        assert r["prediction"] == str(int(p.argmax()))
        assert r["top"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-6)
    assert results[0]["prediction"] == results[2]["prediction"] and results[1]["prediction"] == results[3]["prediction"]


def test_the_predictor_names_each_position_and_returns_the_glimpses(exported, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8)
    np.save(tmp_path / "seq.npy", image.astype(np.float32) / 255)               # floats in [0, 1] are accepted
    done = predict(exported["rnn_spn"], tmp_path / "seq.npy", "--json", "--top", "2")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)["results"][0]
    assert len(r["prediction"]) == 3 and all(len(t) == 2 for t in r["top"])
    assert np.array(r["theta"]).shape == (3, 2, 3)
    text = predict(exported["rnn_spn"], tmp_path / "seq.npy")
    assert text.returncode == 0 and text.stdout.count("|") == 2                   # one group per position


def test_the_predictor_rejects_bad_inputs_with_one_clear_line(exported, tmp_path):
    from formats import write_png

    np.save(tmp_path / "shape.npy", np.zeros((3, 30, 28), np.uint8))
    np.save(tmp_path / "dtype.npy", np.zeros((28, 28), np.int64))
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan, np.float32))
    np.save(tmp_path / "range.npy", np.full((28, 28), 3.0, np.float32))
    write_png(tmp_path / "small.png", np.zeros((20, 20), np.uint8))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "model.onnx").write_bytes(b"junk")
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["pixels"], ["log_probs"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 28, 28])],
                              [helper.make_tensor_value_info("log_probs", TensorProto.UINT8, [1, 28, 28])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10),
              str(tmp_path / "other.onnx"))
    cases = [
        (exported["mlp"], "shape.npy", "shape (3, 30, 28); the model takes one image of 28x28"),
        (exported["mlp"], "dtype.npy", "pixels of dtype int64"),
        (exported["mlp"], "nan.npy", "NaN or infinite"),
        (exported["mlp"], "range.npy", "must lie in [0, 1]"),
        (exported["mlp"], "text.png", "not a PNG file"),
        (exported["mlp"], "missing.npy", "no such file"),
        (tmp_path / "model.onnx", "nan.npy", "not an ONNX model"),
        (tmp_path / "other.onnx", "nan.npy", "not a dgm-dist classifier"),
    ]
    # an image of another size is resized by area averaging (the card's method), or refused with --no-resize
    assert predict(exported["mlp"], tmp_path / "small.png").returncode == 0
    refused = predict(exported["mlp"], tmp_path / "small.png", "--no-resize")
    assert refused.returncode == 2 and "an image of 20x20 pixels; the model takes 28x28" in refused.stderr
    for model, name, message in cases:
        done = predict(model, tmp_path / name)
        assert done.returncode == 2, (name, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, \
            (name, done.stderr)


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory):
    """A fresh virtual environment with only the edge distribution (edge/pyproject.toml) installed,
    as on a device: `pip install ./edge[cpu]`, built from the source tree, not editable."""
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           f"{Path(__file__).resolve().parents[1] / 'edge'}[cpu]"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def test_the_edge_package_installs_alone_and_runs_every_classifier_kind(edge_venv, exported, tmp_path):
    absent = subprocess.run([str(edge_venv / "bin" / "python"), "-c",
                             "import importlib.util as u; print([m for m in ('torch', 'ray', 'mlflow', 'onnx', "
                             "'dgm_dist', 'dgm_predict', 'onnxruntime') if u.find_spec(m) is None])"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)   # not the checkout
    assert absent.stdout.strip() == "['torch', 'ray', 'mlflow', 'onnx', 'dgm_dist']", absent.stderr
    rng = np.random.default_rng(3)
    for name, model in exported.items():
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        pixels = rng.integers(0, 256, (4, *sess.get_inputs()[0].shape[1:]), dtype=np.uint8)
        np.save(tmp_path / f"{name}.npy", pixels)
        done = subprocess.run([str(edge_venv / "bin" / "dgm-predict"), str(model), str(tmp_path / f"{name}.npy"),
                               "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, (name, done.stderr)
        got = [r["prediction"] for r in json.loads(done.stdout)["results"]]
        classes = from_metadata(dict(sess.get_modelmeta().custom_metadata_map))["classes"]
        best = sess.run(["log_probs"], {"pixels": pixels})[0].argmax(-1)          # the graph's own answer
        assert got == [[classes[c] for c in row] if best.ndim == 2 else classes[row] for row in best], name
        # the on-device check: the bundle's metrics equal the card's, and latency at batch 1 and 64
        done = subprocess.run([str(edge_venv / "bin" / "dgm-predict"), str(model), "--check",
                               str(model.with_name("test_bundle.npz")), "--seconds", "0.05", "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (name, done.stderr)
        report = json.loads(done.stdout)
        assert report["passed"] and report["difference_points"] == 0 and report["provider"] == "CPUExecutionProvider"
        assert report["examples"] == (70 if name in SEQUENCE_MODELS else 130)       # the whole tiny test set
        assert [r["batch"] for r in report["latency"]] == [1, 64] and all(r["ms"] > 0 for r in report["latency"])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_validate_reports_a_cuda_session_that_fell_back_to_the_cpu(exported, data_dir, trained, monkeypatch, capsys):
    """Asked for CUDA where ONNX Runtime cannot use it (this CPU build, or onnxruntime-gpu without
    CUDA 13 libraries), the session silently runs on the CPU: validate fails and says so."""
    monkeypatch.setenv("DGM_CACHE_DIR", str(trained[1]))
    code, result, err = run(capsys, "validate", str(exported["mlp"]), "--data-dir", str(data_dir), "--no-latency",
                            "--provider", "cuda")
    assert code == 1 and not result["passed"]
    check = next(c for c in result["checks"] if c["check"] == "CUDA provider in use")
    assert not check["passed"] and "fell back to the CPU" in check["detail"]
    assert result["providers"] == ["CPUExecutionProvider"]


def test_export_fetches_a_checkpoint_from_remote_storage(shared_cache, root, data_dir, capsys, tmp_path):
    """On a cluster the best trial's checkpoint lives in s3://; a file:// URI takes the same path
    (Ray Train's storage layer over pyarrow)."""
    from dgm_dist.training.reevaluate import find_checkpoint

    local = find_checkpoint(shared_cache["mlp"], str(root / "ray"))
    code, summary, err = run(capsys, "export", local.as_uri(), "--set", f"tracking.root={root}",
                             "--data-dir", str(data_dir), "--no-register", "--out", str(tmp_path))
    assert code == 0, err
    assert summary["checkpoint"] != str(local) and (tmp_path / "model.onnx").is_file()
    code, _, err = run(capsys, "export", "file:///no/such/checkpoint", "--set", f"tracking.root={root}",
                       "--no-register")
    assert code == 2 and "cannot fetch the checkpoint file:///no/such/checkpoint" in err
