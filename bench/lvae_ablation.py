"""The Ladder VAE paper's ablation (VAE, + BN, + warm-up, LVAE), seeded, at one equal budget per row.

    python bench/lvae_ablation.py train    --out runs/lvae_ablation          # every row x seed, one at a time
    python bench/lvae_ablation.py evaluate --out runs/lvae_ablation --examples 5000
    python bench/lvae_ablation.py table    --out runs/lvae_ablation          # the table of docs/results.md §2

`train` runs `dgm-dist train <row>-mnist-5l-cpu --set seed=S` for each row and seed (20 epochs,
Fashion-MNIST; the same held-out split for every run: only the training seed differs) and keeps
each run's JSON in OUT. `evaluate` takes the best run of each row by its VALIDATION bound (never the
test set) to `dgm-dist evaluate RUN --iw-samples K --examples N` with K = 100 and 5 000 on the same
first N test images. `table` prints mean ± spread (half the range over the seeds). Each phase skips
what OUT already holds, so an interrupted phase is continued by running it again. `--quick` is the
smoke test of tests/test_bench.py (VAE and LVAE rows, a 2-layer model of 1 epoch, one seed, k = 5 and 10).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROWS = {"VAE": "vae-mnist-5l-cpu", "VAE + BN": "vae-bn-mnist-5l-cpu", "VAE + BN + WU": "vae-bn-wu-mnist-5l-cpu",
        "LVAE + BN + WU": "lvae-bn-wu-mnist-5l-cpu"}


ROOT: list[str] = []        # `--set tracking.root=DIR` when --root is given (train and evaluate)
TRAIN: list[str] = []       # --data-dir / --dataset / --set given to the driver, passed to every training


def dgm(*args: str) -> dict:
    """One dgm-dist command with --json; its progress goes to our stderr."""
    done = subprocess.run([sys.executable, "-m", "dgm_dist.cli", *args, *ROOT, "--json"], stdout=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"dgm-dist {' '.join(args)} failed with status {done.returncode}")
    return json.loads(done.stdout[done.stdout.index("{"):])            # the one JSON object, indented


def train(out: Path, seeds: list[int], quick: bool) -> None:
    """Every row and seed (`--quick`: the first and last row, one seed)."""
    quick_sizes = {"model.latent": "4,2", "model.hidden": "32,16", "model.iw_samples": "5", "data.validation": "500",
                   "optim.warmup_epochs": "0.5"}
    extra = ["--workers", "0", "--epochs", "1", *(a for k, v in quick_sizes.items() for a in ("--set", f"{k}={v}"))] \
        if quick else []
    rows = {r: ROWS[r] for r in ("VAE", "LVAE + BN + WU")} if quick else ROWS
    for row, preset in rows.items():
        for seed in seeds:
            path = out / f"{preset}-seed{seed}.json"
            if path.exists():
                continue
            name = f"ablation-{preset}-seed{seed}" + ("-quick" if quick else "")
            print(f"== {row}, seed {seed}: dgm-dist train {preset} --set seed={seed}", file=sys.stderr, flush=True)
            result = dgm("train", preset, "--set", f"seed={seed}", "--run-name", name, *extra, *TRAIN)
            path.write_text(json.dumps({"row": row, "seed": seed, **result}, indent=1))


def runs(out: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {row: [] for row in ROWS}
    for path in sorted(out.glob("*-seed*.json")):
        run = json.loads(path.read_text())
        found[run["row"]].append(run)
    return found


def evaluate(out: Path, examples: int, ks: tuple[int, int]) -> None:
    """The best run of each row, chosen on validation, at k = 100 and k = 5 000 on the same images."""
    for row, row_runs in runs(out).items():
        if not row_runs:
            continue
        best = max(row_runs, key=lambda r: r["metrics"]["valid_iw_ll"])
        for k in ks:
            path = out / f"k{k}-{ROWS[row]}.json"
            if path.exists():
                continue
            print(f"== {row}: k = {k} on {examples} test images of {best['run_name']}", file=sys.stderr, flush=True)
            result = dgm("evaluate", best["run_name"], "--iw-samples", str(k), "--examples", str(examples))
            path.write_text(json.dumps({"row": row, "seed": best["seed"], "run_name": best["run_name"],
                                        "mlflow_run_id": best["mlflow_run_id"], **result}, indent=1))


def spread(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def table(out: Path, ks: tuple[int, int]) -> None:
    """Mean ± half the range over the seeds; the best run's k = 100 / k = 5 000 on the same images."""
    print(f"| row | seeds | test ELBO | test log-lik., k = {ks[0]} | best run: k = {ks[0]} / k = {ks[1]:,} "
          "(first N test images) | KL per layer (nats) | active units per layer | wall time | MLflow runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row, row_runs in runs(out).items():
        if not row_runs:
            continue
        m = [r["metrics"] for r in row_runs]
        layers = sum(1 for key in m[0] if key.startswith("test_kl_layer"))
        kl = " / ".join(f"{statistics.mean(x[f'test_kl_layer{i}'] for x in m):.1f}" for i in range(1, layers + 1))
        units = " / ".join(spread([x[f"test_active_units{i}"] for x in m], 0).replace(" ± 0", "")
                           for i in range(1, layers + 1))
        evaluated = [out / f"k{k}-{ROWS[row]}.json" for k in ks]
        far = "–"
        if all(p.exists() for p in evaluated):
            e = [json.loads(p.read_text()) for p in evaluated]
            far = (f"{e[0]['metrics']['test_iw_ll']:.2f} / {e[1]['metrics']['test_iw_ll']:.2f} "
                   f"(seed {e[1]['seed']}, N = {e[1]['examples']:,})")
        print(f"| {row} | {', '.join(str(r['seed']) for r in row_runs)} | {spread([x['test_elbo'] for x in m])} "
              f"| {spread([x['test_iw_ll'] for x in m])} | {far} | {kl} "
              f"| {units} = {spread([x['test_active_units'] for x in m], 0)} "
              f"| {statistics.mean(r['seconds'] for r in row_runs) / 60:.1f} min "
              f"| {', '.join('`' + r['mlflow_run_id'] + '`' for r in row_runs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "evaluate", "table", "all"])
    parser.add_argument("--out", type=Path, default=Path("runs/lvae_ablation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--examples", type=int, default=5000, help="test images of the k = 5 000 evaluation")
    parser.add_argument("--root", help="where runs, checkpoints and MLflow go (tracking.root; default: runs)")
    parser.add_argument("--dataset", help="train on this dataset instead of the presets'")
    parser.add_argument("--data-dir", help="the dataset's directory (dgm-dist train --data-dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--quick", action="store_true", help="smoke test: a 2-layer model, 1 epoch, one seed")
    args = parser.parse_args()
    if args.root:
        ROOT.extend(["--set", f"tracking.root={args.root}"])
    TRAIN.extend(["--dataset", args.dataset] if args.dataset else [])
    TRAIN.extend(["--data-dir", args.data_dir] if args.data_dir else [])
    TRAIN.extend(a for item in args.set for a in ("--set", item))
    ks = (5, 10) if args.quick else (100, 5000)
    if args.quick:
        args.examples, args.seeds = 200, args.seeds[:1]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "all"):
        train(args.out, args.seeds, args.quick)
    if args.phase in ("evaluate", "all"):
        evaluate(args.out, args.examples, ks)
    if args.phase in ("table", "all"):
        table(args.out, ks)


if __name__ == "__main__":
    main()
