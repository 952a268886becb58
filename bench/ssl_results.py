"""The semi-supervised results of docs/results.md §1: Fashion-MNIST with 100 labels, one worker
with 2 CPUs, the same wall-clock budget for every arm, seeded.

    python bench/ssl_results.py train --out runs/ssl_results [--minutes 60]   # every arm, one at a time
    python bench/ssl_results.py table --out runs/ssl_results                  # table + learning curves

Arms (the `-cpu` presets' recipe, docs/results.md §1): the labels-only MLP, M2, ADGM and SDGM with
two seeds each, SDGM without the unlabelled term (`model.unlabelled_weight=0`: the ablation that
attributes the gain) and SDGM with independent per-class draws of z (`model.shared_noise=false`: the
estimator's effect). Each run is `dgm-dist train PRESET --max-minutes M --set seed=S`; the seed
changes the initial weights and the batches, not the labelled subset or the validation hold-out.
`train` skips arms whose JSON is in OUT, so an interrupted sweep is continued by running it again
(an interrupted arm starts over under a new name: a resumed run would get a second budget).
`table` prints the final test error at the budget, and the test error at the epoch of the best
VALIDATION error (never chosen on the test set), as mean ± half the range over the seeds; and
draws every arm's test error against minutes in one figure (OUT/learning_curves.png), logged with
the table to an MLflow run `ssl-results` of the same experiment.
`--quick` is the smoke test of tests/test_bench.py (two arms, 2-unit-wide models, seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# arm -> (preset, overrides, seeds)
ARMS = {
    "MLP (labels only)": ("mlp-fashion100", [], (0,)),
    "M2": ("m2-mnist100-cpu", [], (0,)),
    "ADGM": ("adgm-mnist100-cpu", [], (0, 1)),
    "SDGM": ("sdgm-mnist100-cpu", [], (0, 1)),
    "SDGM, unlabelled term off": ("sdgm-mnist100-cpu", ["model.unlabelled_weight=0"], (0,)),
    "SDGM, independent class noise": ("sdgm-mnist100-cpu", ["model.shared_noise=false"], (0,)),
}
QUICK = {"MLP (labels only)": ("mlp-fashion100", [], (0,)), "SDGM": ("sdgm-mnist100-cpu", [], (0,))}
QUICK_SIZES = ["model.hidden=8", "model.latent=2", "model.aux=2", "model.eval_samples=2", "data.validation=200",
               "optim.epochs=1", "data.labels=20", "optim.labelled_batch_size=20"]
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
    return "".join(c if c.isalnum() else "-" for c in arm.lower()).strip("-").replace("--", "-")


def train(out: Path, arms: dict, minutes: float, quick: bool) -> None:
    for arm, (preset, overrides, seeds) in arms.items():
        for seed in seeds:
            path = out / f"{slug(arm)}-seed{seed}.json"
            if path.exists():
                continue
            name = f"ssl-{slug(arm)}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
            sets = [a for item in [*overrides, f"seed={seed}", *(QUICK_SIZES if quick else [])]
                    for a in ("--set", item)]
            print(f"== {arm}, seed {seed}: dgm-dist train {preset} --max-minutes {minutes:g} "
                  f"{' '.join(sets)}", file=sys.stderr, flush=True)
            extra = ["--workers", "0"] if quick else []
            result = dgm("train", preset, "--max-minutes", f"{minutes:g}", "--run-name", name, *sets, *extra, *TRAIN)
            path.write_text(json.dumps({"arm": arm, "seed": seed, "preset": preset, "overrides": overrides,
                                        **result}, indent=1))


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


def curves(found: dict[str, list[dict]]) -> dict[str, list[tuple[list[float], list[float]]]]:
    """Test error (%) against minutes since the run started, per arm and seed, from MLflow."""
    from mlflow import MlflowClient

    out: dict[str, list] = {}
    for arm, arm_runs in found.items():
        for run in arm_runs:
            client = MlflowClient(run["mlflow"]["tracking_uri"])
            start = client.get_run(run["mlflow_run_id"]).info.start_time
            history = sorted(client.get_metric_history(run["mlflow_run_id"], "test_error"), key=lambda m: m.step)
            out.setdefault(arm, []).append(([(m.timestamp - start) / 60_000 for m in history],
                                            [100 * m.value for m in history]))
    return out


def plot(lines: dict[str, list], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, seeds) in enumerate(lines.items()):
        for j, (minutes, error) in enumerate(seeds):
            ax.plot(minutes, error, color=f"C{i}", linestyle=("-", "--", ":")[j % 3], marker=".",
                    label=arm if j == 0 else None)
    ax.set_xlabel("minutes (one worker, 2 CPUs)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Fashion-MNIST, 100 labels (dashed: second seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(out: Path, arms: dict, log: bool) -> str:
    found = runs(out, arms)
    lines = ["| arm | preset, overrides | seeds | test error at the budget (%) | test error at the best "
             "validation epoch (%) | steps | unlabelled ex/s | minutes | MLflow runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, arm_runs in found.items():
        if not arm_runs:
            continue
        m = [r["metrics"] for r in arm_runs]
        first = arm_runs[0]
        setting = " ".join([f"`{first['preset']}`", *(f"`{o}`" for o in first["overrides"])])
        lines.append(
            f"| {arm} | {setting} | {', '.join(str(r['seed']) for r in arm_runs)} "
            f"| {spread([r['test_error'] for r in arm_runs])} "
            f"| {spread([x.get('best_test_error', x['test_error']) for x in m])} "
            f"| {spread([r['steps'] for r in arm_runs], 1, 0)} "
            f"| {spread([r['examples_per_s'] for r in arm_runs], 1, 0)} "
            f"| {statistics.mean(r['seconds'] for r in arm_runs) / 60:.1f} "
            f"| {', '.join('`' + r['mlflow_run_id'][:8] + '`' for r in arm_runs)} |")
    text = "\n".join(lines)
    figure = plot(curves(found), out / "learning_curves.png") if any(found.values()) else None
    (out / "table.md").write_text(text + "\n")
    if log and figure is not None:
        import mlflow

        first = next(r for arm_runs in found.values() for r in arm_runs)
        mlflow.set_tracking_uri(first["mlflow"]["tracking_uri"])
        mlflow.set_experiment("dgm-dist")
        with mlflow.start_run(run_name="ssl-results") as summary:
            mlflow.set_tag("runs", ", ".join(r["mlflow_run_id"] for arm_runs in found.values() for r in arm_runs))
            mlflow.log_artifact(str(figure))
            mlflow.log_artifact(str(out / "table.md"))
        text += f"\n\nfigure {figure}; MLflow run ssl-results {summary.info.run_id}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "table", "all"])
    parser.add_argument("--out", type=Path, default=Path("runs/ssl_results"))
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of every arm")
    parser.add_argument("--arms", nargs="+", help="only these arms (names as in the table)")
    parser.add_argument("--root", help="where runs, checkpoints and MLflow go (tracking.root; default: runs)")
    parser.add_argument("--data-dir", help="the dataset's directory (dgm-dist train --data-dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--no-log", action="store_true", help="do not log the table and figure to MLflow")
    parser.add_argument("--quick", action="store_true", help="smoke test: two arms, tiny models, one epoch")
    args = parser.parse_args()
    arms = QUICK if args.quick else ARMS
    if args.arms:
        unknown = set(args.arms) - set(arms)
        if unknown:
            parser.error(f"unknown arm(s) {', '.join(sorted(unknown))}; arms: {', '.join(arms)}")
        arms = {a: arms[a] for a in args.arms}
    if args.root:
        ROOT.extend(["--set", f"tracking.root={args.root}"])
    TRAIN.extend(["--data-dir", args.data_dir] if args.data_dir else [])
    TRAIN.extend(a for item in args.set for a in ("--set", item))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "all"):
        train(args.out, arms, args.minutes, args.quick)
    if args.phase in ("table", "all"):
        print(table(args.out, arms, not args.no_log))


if __name__ == "__main__":
    main()
