"""The `dgm-dist` command line. Thin: parse, build a config, call the library, print.

Errors a user can cause are printed as one line (`dgm-dist: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from dgm_dist import __version__
from dgm_dist.errors import DgmError

EXAMPLES = {
    "data list": "  dgm-dist data list\n  dgm-dist data list --data-dir ~/datasets --json",
    "data prepare": "  dgm-dist data prepare fashion-mnist\n"
                    "  dgm-dist data prepare cluttered-fashion-mnist --set data.cluttered.n_train=10000\n"
                    "  dgm-dist data prepare mnist --data-dir ~/datasets/mnist",
    "data inspect": "  dgm-dist data inspect cluttered-fashion-mnist --out outputs/cluttered.png\n"
                    "  dgm-dist data inspect fashion-mnist --split train --count 64 --out grid.png",
    "config show": "  dgm-dist config show sdgm-mnist100-cpu\n"
                   "  dgm-dist config show rnn-spn-seq3 --set model.downsample=4 > my.yaml   # then --config my.yaml",
    "config list": "  dgm-dist config list",
    "train": "  dgm-dist train mlp-fashion --workers 2 --epochs 3\n"
             "  dgm-dist train mlp --dataset fashion-mnist --workers 0 --epochs 1   # in-process, quick\n"
             "  dgm-dist train rnn-spn-seq3-cpu --max-minutes 8 --json\n"
             "  dgm-dist train mlp-fashion --run-name my-run --epochs 10   # same name again: resumes\n"
             "  dgm-dist train cnn-seq3 --gpus --workers 4 --address auto  # on a running cluster",
    "tune": "  dgm-dist tune tune_spaces/lvae_warmup_bn_cpu.yaml\n"
            "  dgm-dist tune tune_spaces/spn_downsample.yaml --address auto --concurrent 8\n"
            "  dgm-dist tune tune_spaces/lvae_warmup_bn_cpu.yaml --resume    # after an interruption\n"
            "  dgm-dist tune report lvae_warmup_bn_cpu                      # table and plot again",
    "pipeline": "  dgm-dist pipeline                                  # quick: about 8 minutes on 2 cores\n"
                "  dgm-dist pipeline --models ssl,spn --json\n"
                "  dgm-dist pipeline --resume pipeline-quick-20261201-123348   # after Ctrl-C, SIGTERM, a crash\n"
                "  dgm-dist pipeline --preset paper --address auto     # on a GPU cluster (ray submit)",
    "export": "  dgm-dist export rnn-spn-seq3-cpu-20261126-101500            # a run name (its latest checkpoint)\n"
              "  dgm-dist export --study spn_downsample_cpu --quantize int8  # the study's best trial\n"
              "  dgm-dist export 6ca2b55feaf348018f914a2c35bb45ed --aux mean # an MLflow run id; a = mean of q(a|x)",
    "fetch": "  dgm-dist fetch models:/dgm-rnn-spn-cluttered-fashion-mnist@champion --out device/\n"
             "  dgm-dist fetch dgm-mlp-fashion-mnist --out device/          # its champion\n"
             "  dgm-dist fetch models:/dgm-mlp-fashion-mnist/3 --out device/ # version 3",
    "runs orphans": "  dgm-dist runs orphans\n  dgm-dist runs orphans --set tracking.experiment=dgm-dist-pipeline",
    "validate": "  dgm-dist validate runs/exports/RUN/model.onnx\n"
                "  dgm-dist validate runs/exports/RUN/model.int8.onnx --int8-max-drop 1.0 --json\n"
                "  dgm-dist validate model.onnx --provider cuda              # onnxruntime-gpu: CUDA must be used",
}


class _Parser(argparse.ArgumentParser):
    """An epilog may be a function, called only when help is shown (the presets' list imports torch)."""

    def format_help(self):
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="a YAML config file (sections data:, model:, optim:, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set data.labels=100 (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset's files "
                   "(default: DGM_DATA_DIR, then /usr/share/datasets/<name>, then a verified download)")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


DATA_DIR_HELP = "directory holding the dataset's files (default: DGM_DATA_DIR, then /usr/share/datasets/<name>)"


def _add_data_dir(p: argparse.ArgumentParser, what: str = DATA_DIR_HELP) -> None:
    """The one --data-dir: the same meaning on every command that reads a dataset."""
    p.add_argument("--data-dir", metavar="DIR", help=what)


def _data_dir_override(args) -> list[str]:
    """--data-dir as the config override it stands for, made absolute (workers run elsewhere)."""
    return [f"data.data_dir={Path(args.data_dir).expanduser().resolve()}"] if getattr(args, "data_dir", None) else []


def _add_set_and_json(p: argparse.ArgumentParser, what: str = "tracking settings (tracking.*)") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{what}, e.g. --set tracking.root=DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _tracking_config(args):
    """The config of a command whose --set takes tracking settings only (the model, data and
    training settings come from the run's checkpoint): any other key is refused, not ignored."""
    from dgm_dist.config import load_config

    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        if not key.startswith("tracking."):
            raise DgmError(f"--set {item}: `{args.command}` takes tracking settings only (tracking.root, "
                           f"tracking.tracking_uri, tracking.experiment, ...); the run's own settings come from "
                           f"its checkpoint")
    return load_config(overrides=args.overrides)


def version() -> str:
    """The package version, and the commit when run from a git checkout (`0.1.0 (git 4e8f51d)`)."""
    import subprocess

    here = Path(__file__).resolve().parents[1]
    if (here / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = dirty = ""
        if commit:
            return f"{__version__} (git {commit}{', modified' if dirty else ''})"
    return __version__


class _Version(argparse.Action):
    """--version, asking git only when it is given (not on every start of the CLI)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"dgm-dist {version()}")                 # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgm-dist", formatter_class=_formatter,
        description="Train, tune, track and export the DTU deep generative models "
                    "(ADGM/SDGM, Ladder VAE, RNN-SPN) with Ray, MLflow and ONNX.",
        epilog="examples (the main job, then its parts):\n" + EXAMPLES["pipeline"] + "\n"
               "  dgm-dist doctor                                    # what this machine has, and the fixes\n"
               "  dgm-dist train mlp-fashion --workers 1 --epochs 5\n"
               "  dgm-dist tune lvae_warmup_bn_cpu --dry-run\n"
               "  dgm-dist export RUN_NAME && dgm-dist validate runs/exports/RUN_NAME/model.onnx\n"
               "each command's --help shows its own examples")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version (and the commit) and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for add in (_add_data, _add_config, _add_train, _add_evaluate, _add_tune, _add_pipeline, _add_export,
                _add_fetch, _add_runs, _add_validate, _add_doctor):
        add(commands)
    return parser


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="list, prepare and look at datasets", formatter_class=_formatter,
                               description="Datasets: where they are, decoding and caching them, "
                                           "and image grids to look at them.",
                               epilog="examples:\n" + "\n".join(EXAMPLES.values()))
    data_cmds = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = data_cmds.add_parser("list", help="the known datasets and where each was found",
                             formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["data list"],
                             description="List the datasets dgm-dist reads and where each one's files are "
                                         "(nothing is downloaded).")
    p.add_argument("--data-dir", metavar="DIR", help="also look in this directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_data_list)

    p = data_cmds.add_parser("prepare", help="find, decode, check and cache a dataset",
                             formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["data prepare"],
                             description="Find a dataset's files (downloading where allowed), decode and "
                                         "check them, and cache the arrays (cluttered sequences are "
                                         "generated and cached). Prints the splits and their shapes.")
    p.add_argument("dataset", nargs="?", help="dataset name (default: data.dataset of the config)")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_prepare)

    p = data_cmds.add_parser("inspect", help="write a PNG grid of examples with their labels",
                             formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["data inspect"],
                             description="Write a PNG grid of the first examples of a split, each captioned "
                                         "with its label (a cluttered sequence's labels left to right).")
    p.add_argument("dataset", nargs="?", help="dataset name (default: data.dataset of the config)")
    p.add_argument("--out", default="outputs/inspect.png", metavar="PNG", help="where to write the grid")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="the split (default: test)")
    p.add_argument("--count", type=int, default=16, help="number of examples (default: 16)")
    p.add_argument("--columns", type=int, default=4, help="grid columns (default: 4)")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_inspect)


def _add_config(commands) -> None:
    cfg_cmd = commands.add_parser("config", help="show what a preset or model will run; list the presets",
                                  formatter_class=_formatter, description="The resolved configs of presets and "
                                  "models, as YAML that --config reads back.",
                                  epilog="examples:\n" + EXAMPLES["config show"] + "\n" + EXAMPLES["config list"])
    cfg_cmds = cfg_cmd.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = cfg_cmds.add_parser("show", help="the resolved config of a preset or model, as YAML",
                            formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["config show"],
                            description="Print the whole config that `dgm-dist train MODEL_OR_PRESET` with the "
                                        "same --config and --set would run, as YAML that --config accepts.")
    p.add_argument("target", metavar="MODEL_OR_PRESET", help="a preset or a model (dgm-dist config list)")
    p.add_argument("--config", metavar="YAML", help="a YAML file of overrides (applied after the preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=1e-3")
    p.set_defaults(func=cmd_config_show)
    p = cfg_cmds.add_parser("list", help="the presets and models, one line each", formatter_class=_formatter,
                            epilog="examples:\n" + EXAMPLES["config list"],
                            description="The named presets (each paper preset with its 2-core `-cpu` variant "
                                        "on the same line) and the bare models.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_config_list)


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train a model with Ray Train, tracked in MLflow", formatter_class=_formatter,
                            epilog=lambda: _presets_help() + "\n\nexamples:\n" + EXAMPLES["train"],
                            description="Train a model (a preset name such as mlp-fashion, or a bare model name "
                                        "such as mlp) with Ray Train: DDP over gloo on CPU workers, NCCL on "
                                        "GPUs; on an embedded local Ray unless --address or RAY_ADDRESS names "
                                        "a cluster. Every run is logged to MLflow; the same --run-name resumes.")
    p.add_argument("target", metavar="MODEL_OR_PRESET", help="a preset (see --help of `dgm-dist train`) or a model")
    p.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (0: in-process local mode)")
    p.add_argument("--gpus", action="store_true",
                   help="one GPU per worker, DDP over NCCL (scaling.use_gpu=true); without it workers use CPUs "
                        "and gloo")
    p.add_argument("--epochs", type=int, metavar="E", help="number of epochs")
    p.add_argument("--dataset", metavar="NAME", help="dataset (default: the preset's)")
    p.add_argument("--labels", type=int, metavar="N", help="labelled training examples, balanced (0: all)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="wall-clock budget: stop after a final full evaluation once it is spent")
    p.add_argument("--address", metavar="ADDR", help="a running Ray cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--run-name", metavar="NAME", help="name of the run; an existing name resumes it")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML (as `dgm-dist config show`) and exit")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="evaluate a finished run on a whole split", formatter_class=_formatter,
                            epilog="examples:\n  dgm-dist evaluate lvae-bn-wu-mnist-5l-cpu-20261126-130000 "
                                   "--iw-samples 5000\n  dgm-dist evaluate runs/ray/RUN/checkpoint_epoch=000020 "
                                   "--json\n  dgm-dist evaluate 6ca2b55feaf348018f914a2c35bb45ed --split valid",
                            description="Evaluate a trained model (a checkpoint directory, a run name, or an "
                                        "MLflow run id) on a whole split in this process, printing progress; "
                                        "the VAE models' log-likelihood with --iw-samples importance samples "
                                        "(the paper: 5000), chunked to bound memory. The result is also "
                                        "logged to the run's MLflow run when there is one.")
    p.add_argument("run", metavar="RUN", help="checkpoint directory, run name, or MLflow run id")
    p.add_argument("--iw-samples", type=int, metavar="K", help="importance samples (VAE models)")
    p.add_argument("--split", default="test", choices=("test", "valid"), help="the split (default: test)")
    p.add_argument("--batch-size", type=int, default=100, metavar="B", help="examples per batch (default 100)")
    p.add_argument("--examples", type=int, metavar="N",
                   help="only the first N examples of the split (default: all); logged as <metric>_k<K>_n<N>")
    _add_data_dir(p, DATA_DIR_HELP + " (default: where the run found it)")
    _add_set_and_json(p)
    p.set_defaults(func=cmd_evaluate)


def _add_tune(commands) -> None:
    p = commands.add_parser("tune", help="run a Ray Tune study (tune_spaces/*.yaml), or report one",
                            formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["tune"],
                            description="Run the study a YAML file describes (see tune_spaces/): one Ray Train "
                                        "run per trial, scheduled by ASHA, each trial a child of the study's "
                                        "MLflow run; the best trial is printed and logged. `dgm-dist tune "
                                        "report STUDY` writes the trials table and the study's plot again.")
    p.add_argument("target", metavar="STUDY_YAML | report",
                   help="a study file or a bundled study's name, or `report` followed by a study name")
    p.add_argument("study", nargs="?", metavar="STUDY", help="with `report`: the study's name")
    p.add_argument("--samples", type=int, metavar="N", help="repeats of the grid / random draws (default: the file's)")
    p.add_argument("--concurrent", type=int, metavar="K", help="trials at a time (default: as resources allow)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--name", metavar="NAME", help="run the study under this name instead of the file's")
    _add_data_dir(p, DATA_DIR_HELP + "; for every trial")
    p.add_argument("--dry-run", action="store_true",
                   help="print the trial plan, the resources per trial and the concurrency; start nothing")
    p.add_argument("--address", metavar="ADDR", help="a running Ray cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    _add_set_and_json(p)
    p.set_defaults(func=cmd_tune)


def _add_pipeline(commands) -> None:
    p = commands.add_parser("pipeline", help="the main job: studies, best trials, ONNX export, registry, report",
                            formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["pipeline"],
                            description="Run the Tune study of each model family (ssl: ADGM/SDGM, lvae: Ladder "
                                        "VAE, spn: CNN-SPN/RNN-SPN), take each study's best trial, export the "
                                        "classifiers to ONNX, validate them with ONNX Runtime, register them in "
                                        "MLflow, and write report.md (tables and plots), logged to the "
                                        "pipeline's MLflow run. Prints a summary table at the end.")
    p.add_argument("--preset", choices=["quick", "paper"],
                   help="quick (default): small studies, about 8 minutes on 2 CPU cores; paper: the papers' studies "
                        "on a GPU cluster")
    p.add_argument("--models", metavar="LIST", help="families to run (default: ssl,lvae,spn)")
    p.add_argument("--study-file", action="append", default=[], metavar="FAMILY=FILE",
                   help="use this study file for a family instead of the preset's (repeatable)")
    p.add_argument("--resume", metavar="NAME",
                   help="continue the interrupted pipeline NAME (e.g. pipeline-quick-20261201-123348) with the "
                        "settings it started with: finished studies are kept, an unfinished one resumes")
    _add_data_dir(p, DATA_DIR_HELP + "; for every study")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.add_argument("--address", metavar="ADDR", help="a running Ray cluster (default: RAY_ADDRESS, else local)")
    _add_set_and_json(p, "applied to every trial")
    p.set_defaults(func=cmd_pipeline)


def _add_export(commands) -> None:
    p = commands.add_parser("export", help="export a trained classifier to ONNX and register it in MLflow",
                            formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["export"],
                            description="Export a trained classifier (MLP, M2/ADGM/SDGM, CNN, CNN-SPN, RNN-SPN) "
                                        "to one ONNX file with a dynamic batch axis, raw uint8 pixels in, the "
                                        "preprocessing inside, and a model card (model_card.json and the ONNX "
                                        "metadata). ONNX Runtime must reproduce PyTorch on test images before the "
                                        "model is logged to MLflow and registered; the best version of a "
                                        "registered model carries the alias `champion`.")
    p.add_argument("run", nargs="?", metavar="RUN", help="checkpoint directory, run name, or MLflow run id")
    p.add_argument("--study", metavar="STUDY", help="export the best trial of this Tune study instead")
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (ONNX Runtime quantization)")
    p.add_argument("--half", action="store_true",
                   help="also write model.fp16.onnx: weights and activations in float16 (uint8 in, float32 out), "
                        "its probabilities within 1e-2 of PyTorch's")
    p.add_argument("--opset", type=int, default=20, metavar="N", help="ONNX opset (default 20; 18 for older runtimes)")
    p.add_argument("--static-batch", type=int, metavar="N",
                   help="fix the batch axis at N images, for runtimes that want static shapes (TensorRT, NPUs); "
                        "validate and dgm-predict then feed it N at a time (default: a dynamic batch)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <tracking.root>/exports/<run>)")
    p.add_argument("--aux", choices=["sample", "mean"],
                   help="M2/ADGM/SDGM: average q(y|a,x) over fixed draws of a (sample) or use the mean of "
                        "q(a|x) (default: the run's model.predict)")
    p.add_argument("--aux-samples", dest="aux_samples", type=int, metavar="S",
                   help="M2/ADGM/SDGM: draws of a fixed in the graph for --aux sample (default: the run's "
                        "model.eval_samples)")
    p.add_argument("--name", metavar="NAME", help="registered model name (default: dgm-<model>-<dataset>)")
    p.add_argument("--no-register", action="store_true", help="write the files only; nothing to MLflow")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset's files")
    _add_set_and_json(p)
    p.set_defaults(func=cmd_export)


def _add_fetch(commands) -> None:
    p = commands.add_parser("fetch", help="copy a registered model, its card and test bundle into a directory",
                            formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["fetch"],
                            description="Copy a registered model (by alias, version, or its champion) from MLflow "
                                        "into DIR: model.onnx, model_card.json and test_bundle.npz, for "
                                        "`dgm-predict DIR/model.onnx --check DIR/test_bundle.npz` on a device.")
    p.add_argument("model", metavar="MODEL", help="models:/NAME@ALIAS, models:/NAME/VERSION, or NAME (its champion)")
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write the files into")
    _add_set_and_json(p)
    p.set_defaults(func=cmd_fetch)


def _add_runs(commands) -> None:
    runs = commands.add_parser("runs", help="look after the runs in MLflow", formatter_class=_formatter,
                               epilog="examples:\n" + EXAMPLES["runs orphans"])
    runs_cmds = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    p = runs_cmds.add_parser("orphans", help="end the runs left RUNNING by a driver of this host that died",
                             formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["runs orphans"],
                             description="End as KILLED, with a note, every RUNNING run of the experiment whose "
                                         "driver ran on this host and is gone (SIGKILL, the OOM killer, a "
                                         "reboot). Every command that opens the experiment does this too.")
    _add_set_and_json(p)
    p.set_defaults(func=cmd_runs_orphans)


def _add_validate(commands) -> None:
    p = commands.add_parser("validate", help="check an exported ONNX model against PyTorch; time it",
                            formatter_class=_formatter, epilog="examples:\n" + EXAMPLES["validate"],
                            description="Check a model written by `dgm-dist export`: onnx.checker; ONNX Runtime "
                                        "vs PyTorch on real test images at batch 1, 7 and 64; the full test set "
                                        "(fp32: equal metrics; INT8: the change in points); latency at batch 1 "
                                        "and 64 against PyTorch eager on the same threads; where each node "
                                        "runs. Exit status 1 when a check fails.")
    p.add_argument("model", metavar="MODEL.onnx", help="a file written by dgm-dist export")
    p.add_argument("--dataset", metavar="NAME", help="test on another dataset of the same image shape")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset's files")
    p.add_argument("--checkpoint", metavar="DIR", help="the PyTorch checkpoint (default: the one the card names)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto",
                   help="ONNX Runtime provider (auto: CUDA with onnxruntime-gpu and a GPU, else CPU)")
    p.add_argument("--threads", type=int, metavar="N", help="threads for both runtimes (default: torch's)")
    p.add_argument("--int8-max-drop", type=float, default=0.5, metavar="POINTS",
                   help="largest allowed loss of an INT8 model, in percentage points (default 0.5)")
    p.add_argument("--fp16-max-drop", type=float, default=0.2, metavar="POINTS",
                   help="largest allowed loss of an FP16 model (export --half), in percentage points (default 0.2)")
    p.add_argument("--no-latency", action="store_true", help="skip the timing")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_validate)


def _add_doctor(commands) -> None:
    p = commands.add_parser("doctor", help="what this machine has for dgm-dist, and how to fix what is missing",
                            formatter_class=_formatter, epilog="examples:\n  dgm-dist doctor\n  dgm-dist doctor --json",
                            description="Check the installed packages against the pins, the CPUs, GPUs and "
                                        "memory, the datasets found, Ray's authentication and token file, and "
                                        "the MLflow store; one line a check, with the fix. Starts nothing. "
                                        "Exit status 1 when a check fails.")
    p.add_argument("--data-dir", metavar="DIR", help="also look for datasets here")
    _add_set_and_json(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> dict:
    from dgm_dist import doctor
    from dgm_dist.tracking import resolve_uri

    checks = doctor.run(args.data_dir, resolve_uri(_tracking_config(args).tracking))
    if not args.json:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" + ("" if c.ok or not c.fix
                                                                                      else f"\n      fix: {c.fix}"))
    return doctor.as_dict(checks)


def say(line: str) -> None:
    """The one sink for progress lines. Under --json, `main` sends stdout to stderr while a command
    runs, so that stdout carries only the JSON; either way a line is shown at once."""
    print(line, flush=True)


def _presets_help() -> str:
    import dgm_dist.presets  # noqa: F401
    from dgm_dist.config import PRESETS
    from dgm_dist.models.registry import MODELS

    width = max(map(len, [*PRESETS, *MODELS]))
    return ("presets:\n" + "\n".join(f"  {n:<{width}}  {p.description}" for n, p in sorted(PRESETS.items()))
            + "\n\nmodels:\n" + "\n".join(f"  {n:<{width}}  {s.description}" for n, s in MODELS.items()))


def _config(args):
    from dgm_dist.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "dataset", None):
        overrides.insert(0, f"data.dataset={args.dataset}")
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    return load_config(yaml_path=args.config, overrides=overrides)


def _train_config(args):
    from dgm_dist.config import load_config, preset_or_model

    preset, overrides = preset_or_model(args.target)
    flags = {"data.dataset": args.dataset, "scaling.workers": args.workers, "optim.epochs": args.epochs,
             "data.labels": args.labels, "optim.max_minutes": args.max_minutes,
             "scaling.address": args.address, "data.data_dir": args.data_dir,
             "scaling.use_gpu": "true" if args.gpus else None}
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    return load_config(preset, args.config, overrides)


def cmd_config_show(args) -> dict:
    from dgm_dist.config import load_config, preset_or_model, to_dict, to_yaml

    preset, overrides = preset_or_model(args.target)
    cfg = load_config(preset, args.config, overrides + list(args.overrides))
    print(to_yaml(cfg), end="")
    return to_dict(cfg)


def cmd_config_list(args) -> dict:
    import dgm_dist.presets  # noqa: F401
    from dgm_dist.config import PRESETS
    from dgm_dist.models.registry import MODELS

    rows = [(name, p.description, f"{name}-cpu" in PRESETS) for name, p in sorted(PRESETS.items())
            if not (name.endswith("-cpu") and name[:-4] in PRESETS)]
    if not args.json:
        width = max(len(n) + (6 if cpu else 0) for n, _, cpu in rows)
        print("presets (a paper preset and its 2-core variant, `-cpu`, on one line):")
        for name, description, cpu in rows:
            print(f"  {name + (' [-cpu]' if cpu else ''):<{width}}  {description}")
        print("models (their defaults; `dgm-dist config show MODEL`):")
        for name, spec in MODELS.items():
            print(f"  {name:<{width}}  {spec.description}")
    return {"presets": {n: p.description for n, p in sorted(PRESETS.items())},
            "models": {n: s.description for n, s in MODELS.items()}}


def cmd_train(args) -> dict:
    from dgm_dist.training.launcher import train

    cfg = _train_config(args)
    if args.print_config:
        from dgm_dist.config import to_dict, to_yaml

        print(to_yaml(cfg), end="")
        return to_dict(cfg)
    if args.no_download:
        import os

        os.environ["DGM_DOWNLOAD"] = "0"
    result = train(cfg, run_name=args.run_name, verbose=args.verbose, out=say)
    m, summary = result.metrics, result.summary(cfg)
    if not args.json:
        shown = {k: v for k, v in m.items() if k.startswith(("valid_", "test_"))}
        print(f"done in {result.seconds:.0f} s: " +
              "  ".join(f"{k} {100 * v:.2f}%" if k.endswith("error") else f"{k} {v:.4f}" for k, v in shown.items()))
        if m.get("stopped_early"):
            print(f"stopped early: no better validation figure for optim.patience={cfg.optim.patience} epochs")
        if "best_epoch" in m:
            best = {k: v for k, v in m.items() if k.startswith("best_") and k != "best_epoch"}
            print(f"best validation at epoch {int(m['best_epoch'])}: " +
                  "  ".join(f"{k} {100 * v:.2f}%" if k.endswith("error") else f"{k} {v:.4f}" for k, v in best.items()))
        print(f"checkpoint: {result.checkpoint}")
        print(f"MLflow run {result.mlflow_run_id} in {result.tracking_uri}")
        if result.tracking_uri.startswith("sqlite:"):
            print(f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}   (then http://127.0.0.1:5000)")
        print(f"resume or extend: dgm-dist train {args.target} --run-name {result.run_name} --epochs N")
    return summary


def cmd_evaluate(args) -> dict:
    from dgm_dist.tracking import log_evaluation, resolve_uri
    from dgm_dist.training.launcher import storage_path
    from dgm_dist.training.reevaluate import evaluate_run, find_checkpoint

    if any(v is not None and v < 1 for v in (args.iw_samples, args.batch_size, args.examples)):
        raise DgmError("--iw-samples, --batch-size and --examples must be >= 1")
    cfg = _tracking_config(args)
    uri = resolve_uri(cfg.tracking)
    checkpoint = find_checkpoint(args.run, storage_path(cfg), uri)
    out = say
    result = evaluate_run(checkpoint, args.split, args.iw_samples, args.batch_size, out, args.examples,
                          data_dir=args.data_dir)
    log_evaluation(uri, checkpoint, result)
    if not args.json:
        for k, v in result["metrics"].items():
            print(f"{k:<28} {v}")
    return result


def cmd_fetch(args) -> dict:
    from dgm_dist.tracking import check_reachable, resolve_uri

    cfg = _tracking_config(args)
    uri = resolve_uri(cfg.tracking)
    check_reachable(uri)
    from dgm_dist.export.fetch import fetch_model

    result = fetch_model(uri, args.model, Path(args.out))
    if not args.json:
        print(f"{result['model_uri']} ({', '.join(f'{k} {100 * v:.2f} %' for k, v in result['test_metrics'].items())})"
              f" -> {', '.join(result['files'].values())}"
              + ("" if result["bundle"] else "; no test bundle (exported before bundles existed)"))
    return result


def cmd_runs_orphans(args) -> dict:
    from dgm_dist.tracking import end_orphaned_runs, resolve_uri

    cfg = _tracking_config(args)
    uri = resolve_uri(cfg.tracking)
    ended = end_orphaned_runs(uri, cfg.tracking.experiment)
    if not args.json:
        print(f"{len(ended)} run(s) of experiment {cfg.tracking.experiment} ended as KILLED: their driver had died"
              + "".join(f"\n  {run_id}  {name}" for run_id, name in ended.items()))
    return {"experiment": cfg.tracking.experiment, "tracking_uri": uri, "ended": ended}


def _print_plan(p: dict, as_json: bool) -> dict:
    if as_json:
        return p
    r = p["resources_per_trial"]
    sched = ", ".join(f"{k} {v}" for k, v in p["scheduler"].items() if k != "type")
    print(f"study {p['study']} ({p['file']}): base {p['base']}, {p['metric']} ({p['mode']}), "
          f"{p['scheduler']['type']} ({sched})")
    print(f"{p['trials']} trials = {len(p['grid'])} grid point(s) x {p['samples']} sample(s)"
          + (f"; sampled each trial: {', '.join(f'{k} {v}' for k, v in p['sampled'].items())}" if p["sampled"] else ""))
    for i, point in enumerate(p["grid"][:20], 1):
        print(f"  {i:>3}. " + (", ".join(f"{k}={v}" for k, v in point.items()) or "(no grid parameters)"))
    if len(p["grid"]) > 20:
        print(f"  ... and {len(p['grid']) - 20} more grid points")
    print(f"per trial: {r['workers']} worker(s), {r['cpus']:g} CPU(s), {r['gpus']:g} GPU(s); {p['concurrent']} at a "
          f"time ({p['fits_here']} fit on this machine) -> {p['waves']} wave(s) of at most "
          f"{p['max_epochs_per_trial']} epochs; at most {p['max_trial_epochs']} trial-epochs"
          + (" (ASHA stops most trials earlier)" if p["scheduler"]["type"] == "asha" else ""))
    print("nothing was started (--dry-run)")
    return p


def cmd_tune(args) -> dict:
    from dgm_dist.tracking import resolve_uri

    if args.target == "report":
        from dgm_dist.tuning.report import write_report

        if not args.study:
            raise DgmError("usage: dgm-dist tune report STUDY (the study's name, e.g. lvae_warmup_bn_cpu)")
        cfg = _tracking_config(args)
        report = write_report(args.study, resolve_uri(cfg.tracking), cfg.tracking.experiment,
                              Path(cfg.tracking.root) / "studies")
        if not args.json:
            print(report.markdown)
            print(f"written: {', '.join(map(str, report.paths))} (and logged to MLflow run {report.parent_run_id})")
        return {"study": args.study, "parent_run_id": report.parent_run_id, "files": [str(p) for p in report.paths],
                "best": report.best, "trials": report.trials}
    if args.study:
        raise DgmError(f"unexpected argument {args.study!r}: `dgm-dist tune STUDY_YAML` takes one file")
    from dgm_dist.tuning.space import load_study
    from dgm_dist.tuning.study import run_study

    for flag in ("samples", "concurrent"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise DgmError(f"--{flag} must be >= 1")
    if args.address:
        import os

        os.environ["RAY_ADDRESS"] = args.address
    study = load_study(args.target, samples=args.samples, concurrent=args.concurrent,
                       overrides=[*_data_dir_override(args), *args.overrides], name=args.name)
    if args.dry_run:
        from dgm_dist.tuning.space import plan

        return _print_plan(plan(study), args.json)
    out = say
    result = run_study(study, resume=args.resume, verbose=args.verbose, out=out)
    summary = {"study": result.name, "parent_run_id": result.parent_run_id, "tracking_uri": result.tracking_uri,
               "interrupted": result.interrupted, "seconds": round(result.seconds, 1), "best": result.best,
               "trials": [{k: t[k] for k in ("trial_id", "status", "params", "stopped_by", "error")} |
                          {study.metric: t["metrics"].get(study.metric), "epochs": t["metrics"].get("epoch")}
                          for t in result.trials]}
    if result.interrupted:
        print(f"study {result.name} interrupted; its state is saved: dgm-dist tune {args.target}"
              f"{' --name ' + args.name if args.name else ''} --resume "
              f"continues it", file=sys.stderr)
        raise KeyboardInterrupt
    if not args.json:
        if result.best:
            b = result.best
            print(f"best trial {b['trial_id']}: {', '.join(f'{k}={v}' for k, v in b['params'].items())} -> "
                  f"{study.metric} {b['metrics'][study.metric]:.4f}")
            print(f"  checkpoint: {b['checkpoint']}")
        print(f"study {result.name} in {result.seconds:.0f} s; MLflow parent run {result.parent_run_id} at "
              f"{result.tracking_uri}; report: dgm-dist tune report {result.name}")
    return summary


def cmd_export(args) -> dict:
    from dgm_dist.tracking import check_reachable, resolve_uri
    from dgm_dist.training.reevaluate import trained_source

    if bool(args.run) == bool(args.study):       # before anything is created (a store, runs/)
        raise DgmError("give either a RUN (checkpoint directory, run name or MLflow run id) or --study STUDY")
    if args.aux_samples is not None and args.aux_samples < 1:
        raise DgmError("--aux-samples must be >= 1")
    if args.static_batch is not None and not 1 <= args.static_batch <= 65_536:
        raise DgmError("--static-batch must be in 1..65536")
    cfg = _tracking_config(args)
    uri = resolve_uri(cfg.tracking)
    if not args.no_register:
        check_reachable(uri)
    checkpoint, source = trained_source(args.run, args.study, cfg, uri)
    from dgm_dist.export.exporter import ExportOptions
    from dgm_dist.export.graphs import GraphOptions
    from dgm_dist.export.publish import export_and_register

    graph = GraphOptions(aux=args.aux, samples=args.aux_samples)   # None: the run's own settings
    run_dir = checkpoint.parent.name if checkpoint.name.startswith("checkpoint") else checkpoint.name
    out_dir = Path(args.out) if args.out else Path(cfg.tracking.root) / "exports" / run_dir
    out = say
    options = ExportOptions(out_dir, args.opset, args.quantize, graph, args.data_dir, args.static_batch, args.half)
    result = export_and_register(checkpoint, options, source, out,
                                 None if args.no_register else (uri, cfg.tracking.experiment), args.name,
                                 f"export-{run_dir}")
    card = result["card"]
    summary = {"checkpoint": str(checkpoint), "files": result["files"], "model": card["model"],
               "dataset": card["dataset"], "test_metrics": card["test_metrics"], "inference": card["inference"],
               "parity_max_abs_diff": card["parity"]["max_abs_diff"], "source": card["source"],
               "seconds": result["seconds"], "registered": result["registered"]}
    if not args.json:
        print(f"written: {', '.join(result['files'])}")
        print(f"check it: dgm-dist validate {result['files'][0]}")
    return summary


def cmd_validate(args) -> dict:
    from dgm_dist.export.validator import format_report, validate_model

    if args.threads is not None and args.threads < 1 or args.int8_max_drop < 0 or args.fp16_max_drop < 0:
        raise DgmError("--threads must be >= 1, and --int8-max-drop and --fp16-max-drop >= 0")
    out = say
    result = validate_model(Path(args.model), args.data_dir, args.dataset, args.checkpoint, args.provider,
                            args.threads, args.int8_max_drop, not args.no_latency, out, args.fp16_max_drop)
    if not args.json:
        print(format_report(result))
    return result


def cmd_pipeline(args) -> dict:
    from dgm_dist.pipeline import format_terminal, run_pipeline, summary_rows

    if args.address:
        import os

        os.environ["RAY_ADDRESS"] = args.address
    if args.resume:
        given = [f for f, v in (("--preset", args.preset), ("--models", args.models),
                                ("--study-file", args.study_file), ("--data-dir", args.data_dir)) if v]
        if given or any(not o.startswith("tracking.") for o in args.overrides):
            raise DgmError(f"--resume {args.resume} continues with the settings the pipeline started with; drop "
                           f"{', '.join(given) or 'the --set keys other than tracking.*'}")
    files = {}
    for item in args.study_file:
        family, sep, path = item.partition("=")
        if not sep or not path:
            raise DgmError(f"--study-file {item!r}: write FAMILY=FILE, e.g. ssl=tune_spaces/quick_ssl.yaml")
        files[family] = path
    models = [m.strip() for m in (args.models or "ssl,lvae,spn").split(",") if m.strip()]
    out = say
    result = run_pipeline(args.preset or "quick", models, files, [*_data_dir_override(args), *args.overrides],
                          out=out, resume=args.resume, verbose=args.verbose)
    rows = summary_rows(result)
    if not args.json:
        print(format_terminal(rows))
        print(f"{result.name}: {result.seconds / 60:.1f} min; report {result.report} (MLflow run {result.run_id})")
        print(f"browse: mlflow ui --backend-store-uri {result.tracking_uri}   (then http://127.0.0.1:5000)"
              if not result.tracking_uri.startswith("http") else f"browse: {result.tracking_uri}")
    return {"pipeline": result.name, "preset": result.preset, "passed": result.passed, "mlflow_run_id": result.run_id,
            "tracking_uri": result.tracking_uri, "report": str(result.report), "seconds": round(result.seconds, 1),
            "families": rows}


def cmd_data_list(args) -> dict:
    from dgm_dist.data.catalog import DATASETS, raw_source
    from dgm_dist.data.sources import locate

    rows = []
    for name, description in DATASETS.items():
        source = raw_source(name)
        where = locate(source, args.data_dir) or (locate(source) if args.data_dir else None)
        status = str(where) if where else ("missing (downloadable)" if source.checksums else "missing")
        rows.append({"name": name, "description": description, "location": status})
    if not args.json:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  -> {r['location']}")
    return {"datasets": rows}


def _load(args):
    from dgm_dist.data import load_from_config

    cfg = _config(args)
    started = time.perf_counter()
    dataset = load_from_config(cfg.data, download=False if args.no_download else None)
    return cfg, dataset, time.perf_counter() - started


def cmd_data_prepare(args) -> dict:
    cfg, ds, seconds = _load(args)
    splits = {}
    for s in ds.splits():
        x, y = ds.split(s)
        splits[s] = {"images": list(x.shape), "labels": list(y.shape), "dtype": str(x.dtype)}
    summary = {"dataset": ds.name, "origin": ds.origin, "classes": list(ds.classes), "splits": splits,
               "options": ds.options, "seconds": round(seconds, 3)}
    if not args.json:
        print(f"{ds.name}: {ds.num_classes} classes, from {ds.origin} ({seconds:.2f} s)")
        for s, info in splits.items():
            print(f"  {s:<5}  images {tuple(info['images'])} {info['dtype']}  labels {tuple(info['labels'])}")
    return summary


def cmd_data_inspect(args) -> dict:
    from dgm_dist.data.grid import save_grid

    if args.count < 1 or args.columns < 1:
        raise DgmError(f"--count and --columns must be >= 1 (got {args.count}, {args.columns})")
    _, ds, _ = _load(args)
    x, y = ds.split(args.split)
    x, y = x[: args.count], y[: args.count]
    captions = [" ".join(ds.classes[int(c)] for c in row) if row.ndim else ds.classes[int(row)] for row in y]
    path = save_grid(Path(args.out), x, captions, columns=args.columns)
    if not args.json:
        print(f"wrote {path}: {len(x)} {args.split} examples of {ds.name}")
    return {"path": str(path), "dataset": ds.name, "split": args.split, "count": len(x), "labels": captions}


# packages of the extras (pyproject.toml), and how to get them when a command needs one
OPTIONAL = {"onnxruntime": "pip install -e '.[cpu]' (onnxruntime==1.31.1; on GPU nodes '.[gpu]', never both)"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_mode = getattr(args, "json", False)
    try:
        # with --json, stdout carries only the JSON: anything else printed meanwhile (progress, and
        # Ray's warnings, which its driver prints to stdout) goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if json_mode else contextlib.nullcontext():
            result = args.func(args)
    except DgmError as e:
        print(f"dgm-dist: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name not in OPTIONAL:
            raise
        print(f"dgm-dist: error: `{args.command}` needs {e.name}, which is not installed: {OPTIONAL[e.name]}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dgm-dist: interrupted", file=sys.stderr)
        return 130
    if json_mode:
        print(json.dumps(result, indent=2, default=str))
    return 1 if result.get("passed") is False else 0


if __name__ == "__main__":
    sys.exit(main())
