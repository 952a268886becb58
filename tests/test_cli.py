import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from formats import write_mnist_dir
from PIL import Image

from dgm_dist.cli import build_parser, main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "list"], ["data", "prepare"], ["data", "inspect"],
                                  ["config"], ["train"], ["evaluate"], ["tune"], ["pipeline"], ["export"], ["fetch"],
                                  ["runs"], ["validate"]])
def test_every_command_has_help_with_its_own_examples(capsys, argv):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples", 1)[1]
    own = " ".join(argv) if argv else "pipeline"                  # the top level shows the main job's
    assert f"dgm-dist {own}" in examples, text
    others = {"data", "train", "tune", "export", "validate", "fetch", "evaluate"} - set(argv)
    if argv and argv[0] != "data":                                 # `data` shows its three subcommands
        assert not any(f"  dgm-dist {o} " in examples for o in others), text     # no other command's examples


def test_version_names_the_commit_in_a_checkout(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert re.fullmatch(r"dgm-dist 0\.1\.0 \(git [0-9a-f]{7,}(, modified)?\)\n", capsys.readouterr().out)


def test_prepare_json(capsys, tmp_path):
    d = write_mnist_dir(tmp_path / "m", n_train=100, n_test=20)
    code, out, _ = run(capsys, "data", "prepare", "mnist", "--data-dir", str(d), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["splits"]["train"]["images"] == [100, 28, 28] and info["origin"] == str(d)


def test_inspect_cluttered_writes_png_with_labels(capsys, tmp_path):
    d = write_mnist_dir(tmp_path / "m", n_train=300, n_test=100)
    png = tmp_path / "out" / "grid.png"
    code, out, _ = run(capsys, "data", "inspect", "cluttered-mnist", "--data-dir", str(d), "--out", str(png),
                       "--count", "6", "--columns", "3", "--json",
                       "--set", "data.cluttered.n_train=20", "--set", "data.cluttered.n_valid=5",
                       "--set", "data.cluttered.n_test=10", "--set", "data.cluttered.valid_digits=50")
    assert code == 0
    info = json.loads(out)
    assert len(info["labels"]) == 6 and all(len(lab.split()) == 3 for lab in info["labels"])
    img = Image.open(png)
    assert img.size[0] > 3 * 200 and img.size[1] > 2 * 200          # 3x2 grid of 100x100 at scale 2
    assert np.asarray(img).std() > 10


def test_list_shows_locations(capsys, tmp_path):
    d = write_mnist_dir(tmp_path / "mnist")
    code, out, _ = run(capsys, "data", "list", "--data-dir", str(d), "--json")
    rows = {r["name"]: r["location"] for r in json.loads(out)["datasets"]}
    assert code == 0 and rows["mnist"] == str(d) and rows["cluttered-mnist"] == str(d)
    assert rows["omniglot"] == "missing"


@pytest.mark.parametrize("argv, message", [
    (["data", "prepare", "mnist", "--data-dir", "/nonexistent/dir"], "dataset 'mnist' not found"),
    (["data", "prepare", "--set", "optim.lr=-1"], "optim.lr=-1.0 is out of range"),
    (["data", "inspect", "--count", "0"], "--count and --columns must be >= 1"),
])
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dgm_dist.cli", "data", "prepare", "svhn", "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("dgm-dist: error: dataset 'svhn' not found") and "Traceback" not in proc.stderr


def test_inspect_split_error(capsys, tmp_path):
    d = write_mnist_dir(tmp_path / "m")
    code, _, err = run(capsys, "data", "inspect", "mnist", "--data-dir", str(d), "--split", "valid")
    assert code == 2 and "has no 'valid' split; it has ['train', 'test']" in err


def test_grid_handles_every_image_layout():
    from dgm_dist.data.grid import image_grid, to_display
    assert to_display(np.zeros((3, 2, 32, 32), np.uint8)).shape == (3, 32, 64)       # NORB stereo pair
    assert to_display(np.zeros((3, 32, 32, 3), np.uint8)).shape == (3, 32, 32, 3)    # SVHN RGB
    gray = to_display(np.full((2, 28, 28), 0.5, np.float32))                          # OMNIGLOT floats
    assert gray.dtype == np.uint8 and gray.max() == 128
    assert image_grid(np.zeros((5, 32, 32, 3), np.uint8), ["a"] * 5, columns=2).mode == "RGB"


def test_a_refused_export_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export"]) == 2
    assert "either a RUN" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                      # no runs/, no MLflow store


@pytest.mark.parametrize("argv", [
    ["export", "RUN"], ["evaluate", "RUN"], ["fetch", "NAME", "--out", "d"], ["runs", "orphans"], ["doctor"],
    ["tune", "report", "STUDY"],
])
def test_a_set_key_a_command_would_ignore_is_refused(capsys, tmp_path, monkeypatch, argv):
    """These commands take the run's own settings from its checkpoint: --set model.* would do nothing."""
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--set", "model.hidden=5"]) == 2
    err = capsys.readouterr().err
    assert f"--set model.hidden=5: `{argv[0]}` takes tracking settings only" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []                      # refused before anything is written


def test_data_dir_means_the_same_on_every_command_that_reads_a_dataset(capsys, tmp_path, monkeypatch):
    from dgm_dist.cli import DATA_DIR_HELP

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in ("train", "evaluate", "tune", "pipeline", "export", "validate"):
        (action,) = [a for a in sub.choices[command]._actions if "--data-dir" in a.option_strings]
        assert action.help.startswith(DATA_DIR_HELP.split(" (")[0]), command
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.yaml"
    study.write_text("base: mlp\nset: {data.dataset: mnist}\nparameters: {optim.lr: {grid: [0.1, 0.01]}}\n")
    assert main(["tune", str(study), "--data-dir", "rel", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert f"data.data_dir={tmp_path / 'rel'}" in plan["set"]           # made absolute, for every trial


def test_split_and_aux_samples_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["data", "inspect", "fashion-mnist", "--split", "tset"])
    assert "invalid choice: 'tset'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "RUN", "--samples", "5"])             # renamed: --aux-samples
    assert "unrecognized arguments: --samples" in capsys.readouterr().err


def test_doctor_reports_each_check_and_the_fix_for_a_readable_ray_token(tmp_path, monkeypatch, capsys):
    from dgm_dist.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("0" * 64)
    token.chmod(0o644)
    args = ["doctor", "--set", f"tracking.root={tmp_path / 'runs'}", "--json"]
    assert main(args) == 1                                     # a failed check: exit status 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert {"torch", "ray", "mlflow", "onnxruntime", "cpus", "gpus", "datasets", "ray auth"} <= set(checks)
    assert not checks["ray token"]["ok"] and checks["ray token"]["fix"].startswith(f"chmod 600 {token}")
    assert checks["mlflow"]["ok"] and not (tmp_path / "runs").exists()           # checked, nothing created
    token.chmod(0o600)
    main(args)
    assert {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}["ray token"]["ok"]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    main(args)
    assert not {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}["ray auth"]["ok"]


BLOCK_ORT = "import sys, runpy; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; " \
            "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"


@pytest.mark.parametrize("module, args, says", [
    ("dgm_dist.cli", ["validate", "model.onnx"], "dgm-dist: error: `validate` needs onnxruntime, which is not"),
    ("dgm_predict", ["model.onnx", "x.npy"], "dgm-predict: error: onnxruntime is not installed: pip install 'dgm-"),
])
def test_a_missing_onnxruntime_is_one_line_naming_the_extra(tmp_path, module, args, says):
    (tmp_path / "model.onnx").write_bytes(b"")
    done = subprocess.run([sys.executable, "-c", BLOCK_ORT, module, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 2 and says in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
