import pytest

from dgm_dist import config as C
from dgm_dist.errors import ConfigError


def test_defaults_are_valid_and_flatten():
    cfg = C.load_config()
    flat = C.flatten(cfg)
    assert flat["data.dataset"] == "fashion-mnist" and flat["model.hidden"] == [500, 500]
    assert flat["data.cluttered.canvas"] == 100


def test_layers_preset_then_yaml_then_set(tmp_path):
    C.register_preset("unit-test-preset", "for this test", {"model": {"name": "adgm"}, "optim": {"lr": 1e-3}})
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 2.0e-3\n  epochs: 7\nmodel:\n  hidden: [300, 200]\n")
    cfg = C.load_config("unit-test-preset", y, ["optim.epochs=9", "data.cluttered.n_train=500",
                                                "scaling.use_gpu=true", "data.data_dir=none"])
    assert cfg.name == "unit-test-preset" and cfg.model.name == "adgm"
    assert cfg.optim.lr == 2e-3 and cfg.optim.epochs == 9 and cfg.model.hidden == (300, 200)
    assert cfg.data.cluttered.n_train == 500 and cfg.scaling.use_gpu is True and cfg.data.data_dir is None


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", r"optim.lr=0.0 is out of range; must be > 0"),
    ("optim.lr=fast", r"optim.lr='fast' is not valid: expected a number"),
    ("model.name=vgg", r"model.name='vgg' is not allowed; choose one of: mlp, m2, adgm"),
    ("data.dataset=cifar", r"data.dataset='cifar' is not allowed"),
    ("optim.epochs=2.5", r"optim.epochs='2.5' is not valid: expected an integer"),
    ("optim.lr_decay=1.5", r"must be <= 1.0"),
    ("scaling.use_gpu=maybe", "expected true or false"),
    ("model.hidden=5,x", "expected an integer"),
    ("optim.learning_rate=1", r"unknown key 'optim.learning_rate'; allowed: optimizer, lr"),
    ("lr", "expected KEY=VALUE"),
    ("data.cluttered.digits=two", r"data.cluttered.digits='two'"),
    ("optim.lr=nan", r"optim.lr='nan' is not valid: expected a finite number"),
    ("model.alpha=inf", r"model.alpha='inf' is not valid: expected a finite number"),
    ("model.hidden=0", r"model.hidden='0' is not valid: expected sizes >= 1"),
    ("model.channels=8,0,8", r"model.channels='8,0,8' is not valid: expected sizes >= 1"),
])
def test_invalid_overrides_name_field_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        C.load_config(overrides=[override])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: invalid YAML"):
        C.load_config(yaml_path=bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  batch_norm: sometimes\n")
    with pytest.raises(ConfigError, match=rf"{wrong}: model.batch_norm='sometimes' is not allowed; "
                                          "choose one of: off, running, full_train"):
        C.load_config(yaml_path=wrong)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="'model' must be a mapping"):
        C.load_config(yaml_path=nested)
    with pytest.raises(ConfigError, match="not found"):
        C.load_config(yaml_path=tmp_path / "missing.yaml")
    binary = tmp_path / "random.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(ConfigError, match=f"{binary}: not a text file"):
        C.load_config(yaml_path=binary)
    with pytest.raises(ConfigError, match="is a directory"):
        C.load_config(yaml_path=tmp_path)
    nan = tmp_path / "nan.yaml"
    nan.write_text("optim: {lr: .nan}\n")
    with pytest.raises(ConfigError, match=r"optim.lr=nan is not valid: expected a finite number"):
        C.load_config(yaml_path=nan)


def test_presets_are_checked_when_registered():
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        C.register_preset("broken", "", {"optim": {"lrr": 1}})
    assert "broken" not in C.PRESETS
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        C.load_config("nope")


def test_a_relative_data_dir_becomes_absolute_for_the_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.resolve_paths(C.load_config(overrides=["data.data_dir=data/mnist"]))     # as `train` does first
    assert cfg.data.data_dir == str(tmp_path / "data" / "mnist")


@pytest.mark.parametrize("name", ["sdgm-mnist100-cpu", "lvae-bn-wu-norb-5l", "rnn-spn-seq3", "mlp"])
def test_the_yaml_of_a_config_reads_back_to_the_same_config(tmp_path, name):
    preset, overrides = C.preset_or_model(name)
    cfg = C.load_config(preset, overrides=[*overrides, "model.hidden=64,32", "data.cluttered.n_train=123"])
    path = tmp_path / "config.yaml"
    path.write_text(C.to_yaml(cfg))
    assert C.load_config(yaml_path=path) == cfg


def test_an_unknown_preset_suggests_the_closest_names():
    with pytest.raises(ConfigError, match="did you mean sdgm-mnist100-cpu"):
        C.preset_or_model("sdgm-mnist100-cp")


def test_config_show_and_list_and_train_print_config(capsys, tmp_path):
    from dgm_dist.cli import main

    assert main(["config", "show", "adgm-mnist100-cpu", "--set", "optim.lr=1e-3"]) == 0
    shown = capsys.readouterr().out
    (tmp_path / "shown.yaml").write_text(shown)
    cfg = C.load_config(yaml_path=tmp_path / "shown.yaml")
    assert cfg.optim.lr == 1e-3 and cfg == C.load_config("adgm-mnist100-cpu", overrides=["optim.lr=1e-3"])
    assert main(["train", "adgm-mnist100-cpu", "--set", "optim.lr=1e-3", "--print-config"]) == 0
    assert capsys.readouterr().out == shown                      # the same YAML, and nothing was run
    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    assert "  sdgm-mnist100 [-cpu]  " in listing and "\n  sdgm-mnist100-cpu " not in listing
    assert "\n  rnn_spn " in listing
