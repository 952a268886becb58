"""Study files (tune_spaces/*.yaml): loading, defaults, and the errors a user gets before Ray starts."""

from pathlib import Path

import pytest
import yaml

from dgm_dist.errors import ConfigError
from dgm_dist.tuning.space import grid_points, load_study, to_tune_space

ROOT = Path(__file__).parent.parent
BASE = {"study": "s", "base": "mlp", "set": {"data.dataset": "mnist", "optim.epochs": 4},
        "parameters": {"optim.lr": {"grid": [0.001, 0.01]}}}


def write(tmp_path, doc) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc) if isinstance(doc, dict) else doc)
    return path


def test_defaults_come_from_the_base_model(tmp_path):
    study = load_study(write(tmp_path, BASE))
    assert (study.metric, study.mode) == ("valid_error", "min")
    assert study.scheduler == {"type": "asha", "grace_period": 1, "reduction_factor": 3, "max_epochs": 4}
    assert study.trials_planned() == 2 and study.report == {"x": "optim.lr", "y": "test_error"}
    scaling = study.base_config.scaling
    assert scaling.report_every == scaling.checkpoint_every          # the metric is in every report
    assert study.trial_config({"optim.lr": 0.01}).optim.lr == 0.01
    lvae = load_study(write(tmp_path, {**BASE, "base": "lvae-bn-wu-mnist-5l-cpu", "set": {}}))
    assert (lvae.metric, lvae.mode) == ("valid_iw_ll", "max")


def test_local_paths_are_made_absolute_for_the_trials(tmp_path, monkeypatch):
    """Tune runs every trial in a working directory of its own: a relative tracking root or data
    directory would put the trials' checkpoints there."""
    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path, {**BASE, "parameters": {"base": {"grid": ["mlp", "cnn-spn-seq3-cpu"]}}}),
                       overrides=["tracking.root=runs", "data.data_dir=data"])
    monkeypatch.chdir("/")
    for base in ("mlp", "cnn-spn-seq3-cpu"):
        cfg = study.trial_config({"base": base})
        assert (cfg.tracking.root, cfg.data.data_dir) == (str(tmp_path / "runs"), str(tmp_path / "data"))


def test_distributions_become_tune_domains(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    study = load_study(write(tmp_path, {**BASE, "parameters": {
        "optim.lr": {"loguniform": [1e-4, 1e-2]}, "optim.warmup_epochs": {"uniform": [0, 3]},
        "model.hidden": {"choice": [[16], [32, 32]]}, "optim.batch_size": {"randint": [10, 20]},
        "model.batch_norm": {"grid": ["off", "running"]}}}))
    space = to_tune_space(study)["params"]
    assert isinstance(space["optim.lr"], Float) and isinstance(space["optim.batch_size"], Integer)
    assert isinstance(space["model.hidden"], Categorical)
    assert space["model.batch_norm"] == {"grid_search": ["off", "running"]}
    assert grid_points(study) == [{"model.batch_norm": "off"}, {"model.batch_norm": "running"}]


@pytest.mark.parametrize("change, message", [
    ({"paramters": {}}, "'paramters': unknown key; allowed: study, description, base"),
    ({"parameters": {"optim.lr": {"gaussian": [0, 1]}}}, "unknown distribution 'gaussian'; allowed: grid, choice"),
    ({"parameters": {"optim.lr": {"uniform": [0.1]}}}, "uniform needs [low, high]"),
    ({"parameters": {"optim.lr": {"loguniform": [0, 1]}}}, "loguniform needs low > 0"),
    ({"parameters": {"optim.lr": {"grid": []}}}, "grid needs a non-empty list"),
    ({"parameters": {"optim.learning_rate": {"grid": [1]}}}, "unknown key 'optim.learning_rate'"),
    ({"parameters": {"model.batch_norm": {"grid": [False, "running"]}}}, "quote it, e.g. 'off'"),
    ({"parameters": {"model.downsample": {"grid": [0.5]}}}, "model.downsample=0.5 is out of range"),
    ({"resources": {"workers": 64}}, "a trial needs 64 x 1 = 64 CPUs; this machine has"),
    ({"resources": {"gpus_per_worker": 1.5}}, "a fraction of one GPU (<= 1) or a whole number"),
    ({"resources": {"gpus": 1}}, "'resources.gpus': unknown; allowed: workers, cpus_per_worker, gpus_per_worker"),
    ({"scheduler": {"type": "pbt"}}, "'scheduler.type': 'pbt'; allowed: asha, fifo"),
    ({"scheduler": {"grace_period": 9}}, "9 is more than max_epochs=4"),
    ({"scheduler": {"type": "fifo", "reduction_factor": 2}}, "'scheduler.reduction_factor': unknown for fifo"),
    ({"samples": 0}, "'samples': 0: a whole number >= 1"),
    ({"base": "nope"}, "unknown model or preset 'nope'"),
    ({"report": {"lines": "model.dropout"}}, "'model.dropout' is not a searched parameter"),
    ({"study": "a b"}, "use letters, digits"),
    ({"study": ".."}, "use letters, digits"),
    ({"parameters": {"optim.lr": {"grid": [float("nan")]}}}, "expected a finite number"),
    ({"parameters": {"model.name": {"grid": ["mlp", "lvae"]}}}, "disagree on the direction; set mode"),
])
def test_malformed_studies_fail_with_the_file_and_key(tmp_path, change, message):
    path = write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_unreadable_yaml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_study(write(tmp_path, "study: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_study(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "tune_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_studies_load(path, monkeypatch):
    quick = path.stem.startswith("quick_")       # the pipeline's small studies
    if not (path.stem.endswith("_cpu") or quick):  # GPU studies: resources are checked on the cluster
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    study = load_study(path)
    assert study.trials_planned() >= (4 if quick else 8) and study.report.get("x") and study.report.get("lines")
    for point in grid_points(study):              # every trial's config is valid
        cfg = study.trial_config(point)
        assert cfg.optim.epochs == study.max_epochs and cfg.scaling.report_every == cfg.scaling.checkpoint_every


def test_a_base_parameter_gives_each_trial_its_presets_settings(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    study = load_study(ROOT / "tune_spaces" / "spn_downsample.yaml")
    cnn = study.trial_config({"base": "cnn-spn-seq3", "model.downsample": 3})
    rnn = study.trial_config({"base": "rnn-spn-seq3", "model.downsample": 1})
    def key(c):
        return c.model.name, c.model.channels, c.optim.clip_value, c.model.downsample

    assert key(cnn) == ("cnn_spn", (96, 96, 96), None, 3.0) and key(rnn) == ("rnn_spn", (32, 32, 32), 1.0, 1.0)
    assert cnn.optim.epochs == rnn.optim.epochs == 300 and cnn.scaling.gpus_per_worker == 0.5


def test_a_bundled_study_resolves_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                  # no tune_spaces/ here
    study = load_study("lvae_warmup_bn_cpu")
    assert study.name == "lvae_warmup_bn_cpu" and study.path.parent.name == "tune_spaces"
    assert load_study("quick_ssl.yaml").name == "quick_ssl"
    with pytest.raises(ConfigError, match=r"nonesuch: no such study file, nor a bundled study \(bundled: .*quick_ssl"):
        load_study("nonesuch")
    with pytest.raises(ConfigError, match="config file sub/nonesuch.yaml not found"):
        load_study("sub/nonesuch.yaml")                           # a path is never looked up as a name


def test_a_study_runs_under_another_name_with_name(tmp_path):
    assert load_study(write(tmp_path, BASE), name="s-again").name == "s-again"
    with pytest.raises(ConfigError, match=r"'study \(--name\)': '\.\.': use letters"):
        load_study(write(tmp_path, BASE), name="..")


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, monkeypatch, capsys):
    import json

    from dgm_dist.cli import main

    monkeypatch.chdir(tmp_path)
    doc = {**BASE, "parameters": {"optim.lr": {"grid": [0.001, 0.01]}, "model.hidden": {"grid": [[8], [16]]},
                                  "optim.batch_size": {"choice": [25, 50]}},
           "samples": 2, "resources": {"workers": 1, "cpus_per_worker": 1}}
    path = write(tmp_path, doc)
    assert main(["tune", str(path), "--dry-run", "--concurrent", "2", "--name", "planned"]) == 0
    out = capsys.readouterr().out
    assert "study planned" in out and "8 trials = 4 grid point(s) x 2 sample(s)" in out
    assert "sampled each trial: optim.batch_size {'choice': [25, 50]}" in out
    assert "    4. model.hidden=[16], optim.lr=0.01" in out          # safe_dump sorts the keys
    assert "per trial: 1 worker(s), 1 CPU(s), 0 GPU(s); 2 at a time" in out and "4 wave(s) of at most 4 epochs" in out
    assert "nothing was started (--dry-run)" in out
    assert main(["tune", str(path), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["trials"] == 8 and len(plan["grid"]) == 4 and plan["max_trial_epochs"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]          # no runs/, no Ray, no MLflow
