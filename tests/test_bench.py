"""Every benchmark in bench/ runs with --quick (a smoke test: no timing is asserted, only that each
script measures what it says and prints its table). Fashion-MNIST is Debian's package."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from formats import write_mnist_dir

pytestmark = pytest.mark.slow      # starts Ray, Tune, exports or benchmarks: not in `make test-fast`

BENCH = Path(__file__).resolve().parents[1] / "bench"
NUMBER = r"[\d,]+(?:\.\d+)?"


def run(script: str, *args: str, timeout: int = 300, **env: str) -> str:
    command = [str(BENCH / script), *args] if script.endswith(".sh") else [sys.executable, str(BENCH / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent,
                          env={**os.environ, "PYTHON": sys.executable, **env})
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def rows(out: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown rows whose first cell is `first_cell`."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("|") and line.strip("|").split("|")[0].strip() == first_cell]


def ratio(cell: str) -> float:
    value = float(cell.rstrip("x").replace(",", ""))
    assert value > 0
    return value


def test_data_load():
    out = run("data_load.py", "--quick")
    assert re.search(rf"first read {NUMBER} s, cached read {NUMBER} s .*ratio {NUMBER}x", out), out


def test_ssl_throughput_compares_first_layers_estimators_and_prediction():
    out = run("ssl_throughput.py", "--quick")
    found = {(m.group(1), m.group(2)) for m in re.finditer(rf"^(ADGM|SDGM)\s+(\d)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$",
                                                           out, re.M)}
    assert found == {("ADGM", "1"), ("ADGM", "5"), ("SDGM", "1"), ("SDGM", "5")}, out
    arms = {(m.group(1), m.group(2), m.group(3)) for m in re.finditer(
        rf"^(ADGM|SDGM)\s+(\d)\s+(shared|bounds)\s+{NUMBER}\s+(?:independent|probabilities)\s+{NUMBER}\s+{NUMBER}x$",
        out, re.M)}
    assert arms == {(m, k, a) for m in ("ADGM", "SDGM") for k, a in (("1", "shared"), ("5", "bounds"))}, out
    predicted = re.findall(rf"^(ADGM|SDGM)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$", out.split("prediction")[1], re.M)
    assert predicted == ["ADGM", "SDGM"], out
    work = {(m.group(1), m.group(2)): float(m.group(3)) for m in re.finditer(
        rf"^(M2|ADGM)\s+(\d)\s+({NUMBER})\s+{NUMBER}\s+{NUMBER}$", out.split("work of a training step")[1], re.M)}
    assert set(work) == {(m, k) for m in ("M2", "ADGM") for k in ("1", "5")}, out
    # K = 5 draws cost less than 5 single-draw steps: q(a|x) and the x maps run once per example
    assert work["ADGM", "5"] < 4.6 * work["ADGM", "1"] and work["M2", "1"] < work["ADGM", "1"], work


def test_ssl_throughput_names_a_wrong_port_folder_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "ssl_throughput.py"), "--port", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done
    assert "semi-supervised" in done.stderr and str(tmp_path) in done.stderr


def test_spn_throughput():
    out = run("spn_throughput.py", "--quick")
    assert re.search(rf"^cnn .* 1\.00x\s+{NUMBER}x\s+{NUMBER}\s+1\.00x\s+{NUMBER}x$", out, re.M), out
    assert re.search(rf"^rnn_spn d=3 .*33px\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}x\s+{NUMBER}", out, re.M), out


def test_onnx_latency_every_model_at_batch_1_and_64():
    out = run("onnx_latency.py", "--quick", "--threads", "1")
    for model in ("MLP", "ADGM, a = mean", "RNN-SPN (d=3)"):
        found = rows(out, model)
        assert [r[1] for r in found] == ["1", "64"], out
        assert all(ratio(r[4]) and ratio(r[6]) for r in found)


def test_iw_eval_at_k_100_and_5000_against_both_baselines():
    out = run("iw_eval.py", "--quick", "--threads", "1")
    for model in ("VAE + BN + WU", "LVAE + BN + WU"):
        found = rows(out, model)
        assert [r[1] for r in found] == ["100", "5000"], out
        assert all(ratio(r[6]) and ratio(r[8]) for r in found)


def test_profile_step_names_the_costliest_operators():
    out = run("profile_step.py", "--quick", "--top", "3")
    for phase in ("adgm train step", "adgm evaluation", "lvae train step", "lvae evaluation"):
        block = out.split(phase, 1)[1].split("\n\n")[0]
        shares = re.findall(r"^\s+(\d+\.\d)%\s+(\S+)", block, re.M)
        assert len(shares) == 3, block
        assert all(name.startswith(("aten::", "Optimizer", "autograd")) for _, name in shares), block
    assert re.search(r"aten::(mm|addmm)", out.split("adgm train step")[1])     # dense layers dominate


@pytest.mark.parametrize("preset", ["mlp-fashion"])      # --preset adgm-mnist100 takes 2 minutes: not in the suite
def test_train_overhead_measures_one_and_two_workers(preset):
    out = run("train_overhead.py", "--quick", "--preset", preset)
    assert re.search(rf"1 worker / plain loop:\s+{NUMBER}", out), out
    assert re.search(rf"2 workers / 1 worker:\s+{NUMBER}", out), out
    kind = "unlabelled examples/s" if preset.startswith("adgm") else "examples/s"
    assert re.search(rf"^{preset}: {kind}$", out, re.M), out


@pytest.mark.parametrize("args", [["--epochs", "1"], ["--examples", "60000"]])
def test_train_overhead_refuses_an_untimeable_run_in_one_line(args):
    done = subprocess.run([sys.executable, str(BENCH / "train_overhead.py"), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--epochs must be at least 2" in done.stderr, done


def test_host_sync_compares_the_check_every_step_with_every_50():
    out = run("host_sync.py", "--quick")
    assert re.search(rf"^1 step\(s\)\s+{NUMBER}$", out, re.M) and re.search(rf"^50 step\(s\)\s+{NUMBER}$", out, re.M)
    assert re.search(rf"every 50 / every step: {NUMBER}", out), out


def test_png_decode_times_both_decoders_at_the_models_sizes():
    out = run("png_decode.py")
    for size in ("28x28", "100x100"):
        for kind in ("grey, smooth", "RGB, noise"):
            assert re.search(rf"^{size} {kind}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$", out, re.M), out
    for resize in ("640x480 -> 28x28", "640x480 RGB -> 100x100", "4096x4096 -> 28x28"):
        assert re.search(rf"^{resize}\s+{NUMBER}$", out, re.M), out


def test_tune_asha_runs_the_same_trials_with_and_without_early_stopping():
    out = run("tune_asha.py", "--quick", timeout=600)
    asha, fifo = rows(out, "ASHA"), rows(out, "FIFO")
    assert len(asha) == len(fifo) == 1, out
    assert fifo[0][2:4] == ["4", "0"]                    # 2 trials x 2 epochs, none stopped
    assert int(asha[0][2]) <= 4 and fifo[0][4].startswith("optim.lr=")
    assert re.search(rf"ASHA / FIFO wall time: {NUMBER}\s+epochs: {NUMBER}", out), out


def test_gpu_check_runs_every_section_on_the_cpu_with_quick(tmp_path):
    log = tmp_path / "gpu_check.log"
    out = run("gpu_check.sh", "--quick", timeout=600, CUDA_VISIBLE_DEVICES="", GPU_CHECK_LOG=str(log))
    assert "probe: backend gloo on cpu" in out and "all-reduce 1 (expected 1)" in out, out
    assert re.search(rf"dgm-dist train mlp-fashion, 1 epoch on cpu: {NUMBER} examples/s", out), out
    assert {r[0] for r in (rows(out, "adgm") + rows(out, "lvae") + rows(out, "rnn_spn"))} == {"adgm", "lvae", "rnn_spn"}
    assert [r[4] for r in rows(out, "ADGM, S = 100")] == ["1", "64"] and rows(out, "RNN-SPN (d=3)"), out
    assert out.rstrip().endswith("on cpu)") and "all sections passed" in out
    assert "all sections passed" in log.read_text()                 # the log file has the same


def test_gpu_check_without_a_gpu_says_so_and_stops():
    done = subprocess.run([str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "no usable NVIDIA GPU here" in done.stderr and "--quick" in done.stderr


def test_lvae_ablation_trains_every_row_then_evaluates_the_best_by_validation(tmp_path):
    data = write_mnist_dir(tmp_path / "mnist", n_train=1200, n_test=300)        # small real-format files
    out = run("lvae_ablation.py", "all", "--quick", "--out", str(tmp_path / "out"), "--root", str(tmp_path / "runs"),
              "--dataset", "mnist", "--data-dir", str(data), "--set", "data.validation=200", timeout=600)
    table = {row: rows(out, row) for row in ("VAE", "LVAE + BN + WU")}            # --quick: the ends
    assert all(len(r) == 1 for r in table.values()), out
    for (cells,) in table.values():
        assert cells[1] == "0" and float(cells[2]) < 0 and float(cells[3]) < 0       # one seed: ELBO, k = 5
        assert re.fullmatch(rf"-{NUMBER} / -{NUMBER} \(seed 0, N = 200\)", cells[4]), cells
        assert len(cells[5].split(" / ")) == 2                                        # KL of both layers
    evaluated = sorted(p.name for p in (tmp_path / "out").glob("k*-*.json"))
    assert evaluated == ["k10-lvae-bn-wu-mnist-5l-cpu.json", "k10-vae-mnist-5l-cpu.json",
                         "k5-lvae-bn-wu-mnist-5l-cpu.json", "k5-vae-mnist-5l-cpu.json"]


def test_vae_kl_bias_separates_the_old_closed_form_from_the_unbiased_estimates():
    out = run("vae_kl_bias.py", "--quick")
    (cells,) = rows(out, "quick")
    corrected, old, iw1, gap = (float(c) for c in cells[2:6])
    assert abs(corrected - iw1) < 0.1                  # both unbiased for the ELBO: Monte Carlo error only
    assert gap == pytest.approx(old - corrected, abs=2e-3) and gap > 0.5     # the old objective's bias


def test_results_train_each_arm_then_tabulate_and_draw_the_curves(tmp_path):
    data = write_mnist_dir(tmp_path / "fashion", n_train=600, n_test=200)       # small real-format files
    out = run("results.py", "all", "--family", "ssl", "--quick", "--minutes", "5", "--out", str(tmp_path / "out"),
              "--root", str(tmp_path / "runs"), "--data-dir", str(data), timeout=600)
    cells, equal = rows(out, "SDGM")                             # the table, then equal data (epoch 1)
    assert "| test error after epoch 1 (%) |" in out and equal[1] == "0" and equal[2] == cells[3], equal
    assert cells[2] == "0" and 0 <= float(cells[3]) <= 100 and 0 <= float(cells[4]) <= 100, cells
    assert int(cells[5]) == 1 and int(cells[6]) > 0 and re.fullmatch(r"`[0-9a-f]{8}`", cells[9]), cells
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000
    assert re.search(r"MLflow run ssl-results [0-9a-f]{32}", out), out
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*-seed*.json")}
    assert len(done) == 1
    run("results.py", "train", "--family", "ssl", "--quick", "--out", str(tmp_path / "out"), "--seeds", "0",
        "--root", str(tmp_path / "runs"), "--data-dir", str(data))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*-seed*.json")} == done   # finished: skipped
    (record,) = (json.loads(p.read_text()) for p in done)
    assert [p[1] for p in record["history"]["test_error"]] == [record["epochs"]], record  # MLflow step: the epoch
    shutil.rmtree(tmp_path / "runs")              # the MLflow store gone (another machine): the JSON is enough
    again = run("results.py", "table", "--family", "ssl", "--quick", "--out", str(tmp_path / "out"), "--no-log")
    assert rows(again, "SDGM") == [cells, equal] and (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000


def test_results_refuses_seeds_no_chosen_arm_has(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "results.py"), "train", "--family", "ssl", "--out",
                           str(tmp_path), "--arms", "SDGM", "--seeds", "7"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no arm chosen has seed(s) 7" in done.stderr, done
    assert not list(tmp_path.iterdir())                                   # nothing trained, nothing written


def test_results_of_the_sequence_models_carry_the_sequence_error_and_the_attention_figure(tmp_path):
    data = write_mnist_dir(tmp_path / "mnist", n_train=600, n_test=200)
    out = run("results.py", "all", "--family", "spn", "--quick", "--minutes", "5", "--out", str(tmp_path / "out"),
              "--root", str(tmp_path / "runs"), "--data-dir", str(data), "--set", "data.dataset=cluttered-mnist",
              "--no-log", timeout=600)
    cells, equal, where = rows(out, "RNN-SPN, d = 3")   # the table, equal data, the per-position diagnostics
    per_digit, sequence = float(cells[3]), float(cells[4])
    assert 0 <= per_digit <= sequence <= 100, cells
    assert "| test per digit error after epoch 1 (%) |" in out and float(equal[2]) == per_digit, equal  # 1 epoch
    head = next(line for line in out.splitlines() if line.startswith("| arm | seeds | position1_error"))
    assert [c.strip() for c in head.strip("|").split("|")][2:] == [
        "position1_error", "position2_error", "position3_error", "glimpse1_x", "glimpse2_x", "glimpse3_x",
        "glimpse_area", "glimpse_spread"], head
    positions = [float(c) for c in where[2:5]]
    assert sum(positions) / 3 == pytest.approx(per_digit, abs=0.02) and 0 < float(where[8]) < 2, where  # area
    assert (tmp_path / "out" / "attention_boxes_best.png").stat().st_size > 1000     # the RNN-SPN's
    assert (tmp_path / "out" / "rnn-spn-d-3-seed0-attention.png").stat().st_size > 1000  # kept beside its JSON


def test_ssl_bisect_runs_patched_and_configured_arms_and_tabulates_their_curves(tmp_path):
    data = write_mnist_dir(tmp_path / "mnist", n_train=600, n_test=200)          # small real-format files
    tiny = ["data.dataset=mnist", f"data.data_dir={data}", "data.validation=100", "model.hidden=8", "model.latent=2",
            "model.aux=2", "optim.epochs=1", "data.labels=20", "optim.labelled_batch_size=20"]
    out = run("ssl_bisect.py", "--out", str(tmp_path / "out"), "--root", str(tmp_path / "runs"), "--minutes", "5",
              "--arms", "sampled-kl", "--arm", "no-prior=model.weight_prior=false;optim.clip_value=none",
              *(a for s in tiny for a in ("--set", s)), timeout=600)
    for arm in ("sampled-kl", "no-prior"):
        (cells,) = rows(out, arm)
        assert int(cells[1]) == 5 and 0 <= float(cells[2]) <= 100 and float(cells[3]) > 0, cells   # 100 / 20 steps
        assert 0 <= float(cells[4]) <= 100, cells                                  # the class vote
    saved = json.loads((tmp_path / "out" / "no-prior.json").read_text())
    assert saved["sets"][-2:] == ["model.weight_prior=false", "optim.clip_value=none"]


def test_spn_stall_trains_every_update_rule_and_gru_init():
    out = run("spn_stall.py", "--quick")
    found = re.findall(rf"^full\s+8 (rmsprop|rmsprop_lasagne)\s+(torch|lasagne)\s+({NUMBER}) /\s+({NUMBER})$",
                       out, re.M)
    assert {(o, i) for o, i, _, _ in found} == {(o, i) for o in ("rmsprop", "rmsprop_lasagne")
                                               for i in ("torch", "lasagne")}, out
    assert all(0 < float(loss) < 5 for _, _, loss, _ in found)
