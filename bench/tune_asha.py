"""What ASHA saves: a Tune study's wall time with ASHA vs the same trials all run to the end (FIFO).

    python bench/tune_asha.py [STUDY.yaml] [--quick]

One run executes the study twice on the embedded default (a local Ray, MLflow in a temporary
directory): as written, with its ASHA scheduler, and with `scheduler: fifo` and the same
`max_epochs`, so every trial trains to the end. The grid is the same, so the trials are the same.
It prints wall time, epochs trained, the trials ASHA stopped, the best trial of each, and the
ratios. Default study: tune_spaces/ssl_warmup_bn_cpu.yaml (about 17 minutes for both on 2 cores);
`--quick` is a 2-trial, 2-epoch MLP study on 500 Fashion-MNIST labels (a smoke test, about a minute).
"""

import argparse
import os
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICK = {
    "study": "asha_quick", "base": "mlp-fashion",
    "set": {"data.labels": 500, "model.hidden": [64], "optim.epochs": 2},
    "parameters": {"optim.lr": {"grid": [0.3, 0.0003]}},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "concurrent": 2, "resources": {"workers": 1, "cpus_per_worker": 1},
}


def variants(doc: dict) -> dict[str, dict]:
    """The study as written (ASHA) and the same trials with FIFO, each under its own name."""
    scheduler = doc.get("scheduler") or {"type": "asha"}
    if scheduler.get("type", "asha") != "asha":
        raise SystemExit(f"the study's scheduler is {scheduler['type']!r}: give a study that uses ASHA")
    fifo = {"type": "fifo", **({"max_epochs": scheduler["max_epochs"]} if "max_epochs" in scheduler else {})}
    name = doc.get("study", "study")
    return {"asha": {**doc, "study": f"{name}-asha"}, "fifo": {**doc, "study": f"{name}-fifo", "scheduler": fifo}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", nargs="?", default=str(ROOT / "tune_spaces" / "ssl_warmup_bn_cpu.yaml"))
    ap.add_argument("--quick", action="store_true", help="a 2-trial MLP study instead (a smoke test)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from dgm_dist.data import load_from_config
    from dgm_dist.tuning.space import load_study
    from dgm_dist.tuning.study import run_study

    doc = QUICK if args.quick else yaml.safe_load(Path(args.study).read_text())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, variant in variants(doc).items():
            path = Path(tmp) / f"{variant['study']}.yaml"
            path.write_text(yaml.safe_dump(variant))
            study = load_study(path, overrides=[f"tracking.root={tmp}/runs"])
            load_from_config(study.base_config.data)              # decoded once, outside the timing
            results[label] = (study, run_study(study, out=None))
            print(f"{label}: {results[label][1].seconds:.0f} s", flush=True)

    study = results["asha"][0]
    print(f"\n{doc.get('study')}: {study.trials_planned()} trials, {study.max_epochs} epochs each, "
          f"{study.concurrent} at a time; metric {study.metric} ({study.mode})")
    print("| scheduler | wall time | epochs trained | trials stopped early | best trial | its "
          f"{study.metric} |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for label, (_, result) in results.items():
        epochs = sum(int(t["metrics"].get("epoch", 0)) for t in result.trials)
        stopped = sum(1 for t in result.trials if t.get("stopped_by"))
        best = result.best or {"params": {}, "metrics": {}}
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        value = best["metrics"].get(study.metric, float("nan"))
        summary[label] = (result.seconds, epochs, best["params"])
        print(f"| {label.upper()} | {result.seconds / 60:.1f} min | {epochs} | {stopped} | {params} | {value:.4g} |")
    (ta, ea, pa), (tf, ef, pf) = summary["asha"], summary["fifo"]
    print(f"ASHA / FIFO wall time: {ta / tf:.2f}   epochs: {ea / ef:.2f}   "
          f"same best trial: {'yes' if pa == pf else 'no'}")


if __name__ == "__main__":
    main()
