"""The budgeted, seeded comparisons of docs/results.md: one family's arms, one after another, each
with the same wall-clock budget on one worker with 2 CPUs.

    python bench/results.py train --family ssl --out docs/runs/ssl     # every arm and seed
    python bench/results.py table --family ssl --out docs/runs/ssl     # table + learning curves

Families:
- `ssl` (docs/results.md §1; 60 minutes an arm): Fashion-MNIST with 100 labels, the `-cpu` presets'
  recipe: the labels-only MLP, M2, ADGM and SDGM with two seeds each, SDGM without the unlabelled
  term (`model.unlabelled_weight=0`: the ablation that attributes the gain) and SDGM with independent
  per-class draws of z (`model.shared_noise=false`: the estimator's effect).
- `spn` (docs/results.md §3; 30 minutes an arm): cluttered Fashion-MNIST sequences, 60 000 for
  training, 2 000 for validation, the full 10 000 for test; CNN, CNN-SPN (downsample 2), RNN-SPN at
  downsample 2, 3 and 4 from the paper's identity start, and RNN-SPN with `model.theta_start=strips`,
  two seeds each.
Each run is `dgm-dist train PRESET --max-minutes M --set seed=S`; the seed changes the initial
weights and the batches, not the labelled subset, the held-out images or the sequences.
`train` skips arms whose JSON is in OUT, so an interrupted sweep is continued by running it again
(an interrupted arm starts over under a new name: a resumed run would get a second budget).
Each run's JSON keeps its own history (every test_/valid_ metric against minutes and epochs, read
from MLflow when the run ends) and, for the spatial transformers, a copy of its attention-box figure:
the table and the curves need nothing else, so a sweep spread over machines (docs/runs/, committed)
outlives the MLflow store of each machine.
`table` prints the final test figures at the budget and the test figure at the epoch of the best
VALIDATION figure (never chosen on the test set), as mean ± half the range over the seeds, and every
arm's test figure after the last epoch all runs reached (equal data, whatever the machine); draws
every arm's test figure against minutes in one figure (OUT/learning_curves.png); copies the
attention-box figure of the best run by validation (spatial transformers); and logs the table and
figures to an MLflow run `<family>-results` of the same experiment.
`--quick` is the smoke test of tests/test_bench.py (one arm, a tiny model, seconds).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# family -> minutes, main metric, extra metrics, arms: {arm: (preset, overrides, seeds)}
_SEQ = ["data.cluttered.n_train=60000", "data.cluttered.n_valid=2000"]
FAMILIES = {
    "ssl": (60.0, "error", (), {
        "MLP (labels only)": ("mlp-fashion100", [], (0, 1)),
        "M2": ("m2-mnist100-cpu", [], (0, 1)),
        "ADGM": ("adgm-mnist100-cpu", [], (0, 1)),
        "SDGM": ("sdgm-mnist100-cpu", [], (0, 1)),
        "SDGM, unlabelled term off": ("sdgm-mnist100-cpu", ["model.unlabelled_weight=0"], (0, 1)),
        "SDGM, independent class noise": ("sdgm-mnist100-cpu", ["model.shared_noise=false"], (0, 1)),
    }),
    "spn": (30.0, "per_digit_error", ("sequence_error",), {
        "CNN": ("cnn-seq3-cpu", _SEQ, (0, 1)),
        "CNN-SPN, d = 2": ("cnn-spn-seq3-cpu", _SEQ, (0, 1)),
        "RNN-SPN, d = 2": ("rnn-spn-seq3-cpu", [*_SEQ, "model.downsample=2"], (0, 1)),
        "RNN-SPN, d = 3": ("rnn-spn-seq3-cpu", [*_SEQ, "model.downsample=3"], (0, 1)),
        "RNN-SPN, d = 4": ("rnn-spn-seq3-cpu", [*_SEQ, "model.downsample=4"], (0, 1)),
        "RNN-SPN, strips start, d = 3": ("rnn-spn-seq3-cpu", [*_SEQ, "model.downsample=3",
                                                              "model.theta_start=strips"], (0, 1)),
        # item 4's "best downsample", chosen by validation error (d4 17.78 %, d2 18.81 %, d3 21.43 %)
        "RNN-SPN, strips start, d = 4": ("rnn-spn-seq3-cpu", [*_SEQ, "model.downsample=4",
                                                              "model.theta_start=strips"], (0, 1)),
    }),
}
QUICK = {"ssl": {"SDGM": ("sdgm-mnist100-cpu", [], (0,))}, "spn": {"RNN-SPN, d = 3": ("rnn-spn-seq3-cpu", [], (0,))}}
QUICK_SIZES = {
    "ssl": ["model.hidden=8", "model.latent=2", "model.aux=2", "model.eval_samples=2", "data.validation=200",
            "optim.epochs=1", "data.labels=20", "optim.labelled_batch_size=20"],
    "spn": ["model.channels=4,4,4", "model.hidden=16", "model.loc_channels=4,4,4", "model.loc_hidden=8",
            "optim.epochs=1", "optim.batch_size=25", "data.cluttered.n_train=100", "data.cluttered.n_valid=30",
            "data.cluttered.n_test=40", "data.cluttered.valid_digits=100", "data.cluttered.clutter_pool=500"],
}
ROOT: list[str] = []        # `--set tracking.root=DIR` when --root is given
TRAIN: list[str] = []       # --data-dir / --set given to the driver, passed to every training


def dgm(*args: str) -> dict:
    """One dgm-dist command with --json; its progress goes to our stderr."""
    done = subprocess.run([sys.executable, "-m", "dgm_dist.cli", *args, *ROOT, "--json"], stdout=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"dgm-dist {' '.join(args)} failed with status {done.returncode}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def slug(arm: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in arm.lower()).split())


def train(out: Path, family: str, arms: dict, minutes: float, quick: bool) -> None:
    for arm, (preset, overrides, seeds) in arms.items():
        for seed in seeds:
            path = out / f"{slug(arm)}-seed{seed}.json"
            if path.exists():
                continue
            name = f"{family}-{slug(arm)}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
            sets = [a for item in [*overrides, f"seed={seed}", *(QUICK_SIZES[family] if quick else [])]
                    for a in ("--set", item)]
            print(f"== {arm}, seed {seed}: dgm-dist train {preset} --max-minutes {minutes:g} "
                  f"{' '.join(sets)}", file=sys.stderr, flush=True)
            extra = ["--workers", "0"] if quick else []
            result = dgm("train", preset, "--max-minutes", f"{minutes:g}", "--run-name", name, *sets, *extra, *TRAIN)
            record = {"arm": arm, "seed": seed, "preset": preset, "overrides": overrides, **result,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "history": history(result)}
            keep_attention(result, path.with_name(f"{path.stem}-attention.png"))
            path.write_text(json.dumps(record, indent=1))


def history(result: dict) -> dict[str, list[list[float]]]:
    """Every test_/valid_ metric of the run as [minutes since the run started, epoch, value], from MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(result["mlflow"]["tracking_uri"])
    run = client.get_run(result["mlflow_run_id"])
    out = {}
    for key in sorted(run.data.metrics):
        if key.startswith(("test_", "valid_")):
            points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            out[key] = [[round((m.timestamp - run.info.start_time) / 60_000, 3), m.step, m.value] for m in points]
    return out


def keep_attention(result: dict, target: Path) -> None:
    """A copy of a spatial transformer's attention-box figure beside its JSON."""
    if result.get("model") not in ("cnn_spn", "rnn_spn"):
        return
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = MlflowClient(result["mlflow"]["tracking_uri"]).download_artifacts(
                result["mlflow_run_id"], "figures/attention_boxes.png", tmp)
        except Exception:      # noqa: BLE001 - a run without the figure: its figures still stand
            return
        shutil.copy(local, target)


def runs(out: Path, arms: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {arm: [] for arm in arms}
    for path in sorted(out.glob("*-seed*.json")):
        run = json.loads(path.read_text())
        if run["arm"] in found:
            found[run["arm"]].append(run)
    return found


def spread(values: list[float], scale: float = 100, digits: int = 2) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def curves(found: dict[str, list[dict]], metric: str) -> dict[str, list[tuple[list[float], list[float]]]]:
    """The test metric (%) against minutes since the run started, per arm and seed, from the runs' JSON."""
    key = f"test_{metric}"
    return {arm: [([p[0] for p in r["history"][key]], [100 * p[-1] for p in r["history"][key]])
                  for r in arm_runs if key in r.get("history", {})]
            for arm, arm_runs in found.items()}


def plot(lines: dict[str, list], metric: str, title: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, seeds) in enumerate(lines.items()):
        for j, (minutes, values) in enumerate(seeds):
            ax.plot(minutes, values, color=f"C{i}", linestyle=("-", "--", ":")[j % 3], marker=".",
                    label=arm if j == 0 else None)
    ax.set_xlabel("minutes (one worker, 2 CPUs)")
    ax.set_ylabel(f"test {metric.replace('_', ' ')} (%)")
    ax.set_title(f"{title} (dashed: second seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_attention(found: dict[str, list[dict]], metric: str, out: Path) -> Path | None:
    """The attention-box figure of the run with the best validation figure (spatial transformers)."""
    candidates = [r for arm_runs in found.values() for r in arm_runs
                  if f"best_valid_{metric}" in r["metrics"] and r["model"] in ("cnn_spn", "rnn_spn")
                  and (out / f"{slug(r['arm'])}-seed{r['seed']}-attention.png").exists()]
    if not candidates:
        return None
    best = min(candidates, key=lambda r: r["metrics"][f"best_valid_{metric}"])
    target = out / "attention_boxes_best.png"
    shutil.copy(out / f"{slug(best['arm'])}-seed{best['seed']}-attention.png", target)
    return target


def table(out: Path, family: str, arms: dict, log: bool) -> str:
    _, metric, extras, _ = FAMILIES[family]
    found = runs(out, arms)
    unit = metric.replace("_", " ")
    head = [f"test {unit} at the budget (%)", *(f"test {e.replace('_', ' ')} (%)" for e in extras),
            f"test {unit} at the best validation epoch (%)", "epochs", "steps", "ex/s", "minutes", "MLflow runs"]
    lines = ["| arm | preset, overrides | seeds | " + " | ".join(head) + " |", "|---" * (len(head) + 3) + "|"]
    for arm, arm_runs in found.items():
        if not arm_runs:
            continue
        m = [r["metrics"] for r in arm_runs]
        first = arm_runs[0]
        setting = " ".join([f"`{first['preset']}`", *(f"`{o}`" for o in first["overrides"])])
        cells = [spread([x[f"test_{metric}"] for x in m]), *(spread([x[f"test_{e}"] for x in m]) for e in extras),
                 spread([x.get(f"best_test_{metric}", x[f"test_{metric}"]) for x in m]),
                 *(" / ".join(f"{r[k]:.0f}" for r in arm_runs) for k in ("epochs", "steps", "examples_per_s")),
                 f"{statistics.mean(r['seconds'] for r in arm_runs) / 60:.1f}",
                 ", ".join("`" + r["mlflow_run_id"][:8] + "`" for r in arm_runs)]
        seeds = ", ".join(str(r["seed"]) for r in arm_runs)
        lines.append(f"| {arm} | {setting} | {seeds} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + equal_data(found, metric) + diagnostics(found)
    (out / "table.md").write_text(text + "\n")
    if not any(found.values()):
        return text
    figures = [plot(curves(found, metric), metric, TITLES[family], out / "learning_curves.png")]
    attention = best_attention(found, metric, out)
    figures += [attention] if attention else []
    text += "\n\n" + "; ".join(f"figure {f}" for f in figures)
    newest = max((r for arm_runs in found.values() for r in arm_runs), key=lambda r: r.get("finished", ""))
    if log and "finished" not in newest:
        text += "\nnot logged to MLflow: every run here was recorded on another machine (docs/runs/)"
    elif log:
        import mlflow

        # the store of the newest run: older runs' stores may be on machines that are gone (docs/runs/)
        mlflow.set_tracking_uri(newest["mlflow"]["tracking_uri"])
        mlflow.set_experiment("dgm-dist")
        with mlflow.start_run(run_name=f"{family}-results") as summary:
            mlflow.set_tag("runs", ", ".join(r["mlflow_run_id"] for arm_runs in found.values() for r in arm_runs))
            for f in [*figures, out / "table.md"]:
                mlflow.log_artifact(str(f))
        text += f"\nMLflow run {family}-results {summary.info.run_id}"
    return text


def equal_data(found: dict[str, list[dict]], metric: str) -> str:
    """The test figure of every run after the last epoch that all of them reached: equal data for
    every arm, whatever the machine's speed (a budget in minutes buys more steps on a faster machine
    and for a cheaper model; docs/results.md §3.1); "" when no run has a history."""
    key = f"test_{metric}"
    histories = [(arm, r, {int(p[1]): p for p in r["history"][key]})
                 for arm, arm_runs in found.items() for r in arm_runs if r.get("history", {}).get(key)]
    if not histories:
        return ""
    epoch = min(max(h) for _, _, h in histories)
    lines = ["", "", f"| arm | seeds | test {metric.replace('_', ' ')} after epoch {epoch} (%) | "
             f"minutes to epoch {epoch} |", "|---|---|---|---|"]
    for arm in found:
        mine = [(r, h[epoch]) for a, r, h in histories if a == arm and epoch in h]
        if mine:
            lines.append(f"| {arm} | {', '.join(str(r['seed']) for r, _ in mine)} | "
                         f"{spread([p[-1] for _, p in mine])} | {' / '.join(f'{p[0]:.1f}' for _, p in mine)} |")
    return "\n".join(lines)


def diagnostics(found: dict[str, list[dict]]) -> str:
    """The test figures per position of the sequence and where the glimpses look, at the budget
    (docs/models.md, *diagnostics*), for the arms whose runs have them; "" when none has."""
    def key_order(k: str) -> tuple:
        return (not k.startswith("test_position"), k)
    keys = sorted({k for arm_runs in found.values() for r in arm_runs for k in r["metrics"]
                   if re.fullmatch(r"test_(position\d+_error|glimpse\w*)", k)}, key=key_order)
    rows = [(arm, arm_runs) for arm, arm_runs in found.items() if arm_runs and keys[0] in arm_runs[0]["metrics"]] \
        if keys else []
    if not rows:
        return ""
    lines = ["", "", "| arm | seeds | " + " | ".join(k.removeprefix("test_") for k in keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for arm, arm_runs in rows:
        cells = [spread([r["metrics"][k] for r in arm_runs if k in r["metrics"]], 100 if "error" in k else 1,
                        2 if "error" in k else 3) if any(k in r["metrics"] for r in arm_runs) else "–" for k in keys]
        lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in arm_runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TITLES = {"ssl": "Fashion-MNIST, 100 labels", "spn": "cluttered Fashion-MNIST sequences of 3"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "table", "all"])
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, help="wall-clock budget of every arm (default: the family's)")
    parser.add_argument("--arms", nargs="+", help="only these arms (names as in the table)")
    parser.add_argument("--seeds", nargs="+", type=int, help="train only these of each arm's seeds (one run at a "
                        "time across sessions); the table still shows every seed found")
    parser.add_argument("--root", help="where runs, checkpoints and MLflow go (tracking.root; default: runs)")
    parser.add_argument("--data-dir", help="the dataset's directory (dgm-dist train --data-dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--no-log", action="store_true", help="do not log the table and figures to MLflow")
    parser.add_argument("--quick", action="store_true", help="smoke test: one arm, a tiny model, one epoch")
    args = parser.parse_args()
    minutes, _, _, arms = FAMILIES[args.family]
    arms = QUICK[args.family] if args.quick else arms
    if args.arms:
        unknown = set(args.arms) - set(arms)
        if unknown:
            parser.error(f"unknown arm(s) {', '.join(sorted(unknown))}; arms: {', '.join(arms)}")
        arms = {a: arms[a] for a in args.arms}
    if args.seeds:
        if not any(set(args.seeds) & set(seeds) for _, _, seeds in arms.values()):
            parser.error(f"no arm chosen has seed(s) {', '.join(map(str, args.seeds))}")
        trained = {a: (p, o, tuple(s for s in seeds if s in args.seeds)) for a, (p, o, seeds) in arms.items()}
    else:
        trained = arms
    if args.root:
        ROOT.extend(["--set", f"tracking.root={args.root}"])
    TRAIN.extend(["--data-dir", args.data_dir] if args.data_dir else [])
    TRAIN.extend(a for item in args.set for a in ("--set", item))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "all"):
        train(args.out, args.family, trained, args.minutes or minutes, args.quick)
    if args.phase in ("table", "all"):
        print(table(args.out, args.family, arms, not args.no_log))


if __name__ == "__main__":
    main()
