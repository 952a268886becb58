"""`dgm-dist pipeline`: the main job. For each chosen model family, run its Tune study, take the best
trial, and for the classifiers export it to ONNX, validate it with ONNX Runtime and register it in
MLflow; then write one report (the studies' tables and plots, the exported models) and log it to the
pipeline's own MLflow run.

Like the CLI, this module composes the framework with `dgm_dist.export` (imported lazily, inside the
run); nothing else in `dgm_dist` imports it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgm_dist.errors import ConfigError
from dgm_dist.fileio import atomic_write

FAMILIES = ("ssl", "lvae", "spn")
CLASSIFIERS = ("ssl", "spn")            # LVAE studies report a likelihood; there is no classifier to export
PRESETS = {
    "quick": {"ssl": "quick_ssl.yaml", "lvae": "quick_lvae.yaml", "spn": "quick_spn.yaml"},
    "paper": {"ssl": "ssl_warmup_bn.yaml", "lvae": "lvae_warmup_bn.yaml", "spn": "spn_downsample.yaml"},
}
DESCRIPTIONS = {"quick": "small studies on Fashion-MNIST, about 8 minutes on 2 CPU cores",
                "paper": "the papers' studies, for a GPU cluster (hours)"}


def spaces_dir() -> Path:
    """The bundled studies: `dgm_dist/tune_spaces/`, package data of any install."""
    from dgm_dist.tuning.space import BUNDLED

    return BUNDLED


@dataclass
class FamilyResult:
    family: str
    study: str
    parent_run_id: str | None = None
    best: dict[str, Any] | None = None
    metric: str = ""
    trials: int = 0
    seconds: float = 0.0
    export: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    report: str | None = None
    error: str | None = None


@dataclass
class PipelineResult:
    name: str
    preset: str
    run_id: str
    tracking_uri: str
    report: Path
    families: list[FamilyResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(f.error is None for f in self.families)


def study_files(preset: str, models: list[str], files: dict[str, str]) -> dict[str, Path]:
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: choose {' or '.join(PRESETS)}")
    unknown = [m for m in [*models, *files] if m not in FAMILIES]
    if unknown:
        raise ConfigError(f"model family {unknown[0]!r}: choose from {', '.join(FAMILIES)}")
    chosen = {m: Path(files[m]) if m in files else spaces_dir() / PRESETS[preset][m] for m in models}
    for family, path in chosen.items():
        if not path.is_file():
            raise ConfigError(f"the {family} study file {path} is missing; run from a clone of dgm-dist (its "
                              f"tune_spaces/) or pass --study-file {family}=FILE")
    return chosen


def run_pipeline(preset: str = "quick", models: list[str] = FAMILIES, files: dict[str, str] | None = None,
                 overrides: list[str] = (), out=print, resume: str | None = None,
                 verbose: bool = False) -> PipelineResult:
    """Run the studies one after another, then export, validate and register their best classifiers.
    `resume`: the name of an interrupted pipeline, continued from its state file with the settings it
    started with: finished families are kept, an unfinished study resumes from Tune's state."""
    from dgm_dist.config import load_config
    from dgm_dist.tracking import RESUME_TAG, RunTracker, check_reachable, resolve_uri, tracked_run
    from dgm_dist.tuning.space import load_study
    from dgm_dist.tuning.study import run_study

    started = time.time()
    state = _load_state(Path(load_config(overrides=list(overrides)).tracking.root), resume) if resume else None
    if state:
        preset, models, files, overrides = state["preset"], state["models"], state["files"], state["overrides"]
    paths = study_files(preset, list(models), files or {})
    stamp = state["stamp"] if state else time.strftime("%Y%m%d-%H%M%S")
    name = f"pipeline-{preset}-{stamp}"
    studies = {f: load_study(p, overrides=list(overrides)) for f, p in paths.items()}   # all checked first
    cfg = next(iter(studies.values())).base_config
    uri = resolve_uri(cfg.tracking)
    check_reachable(uri)
    root = Path(cfg.tracking.root)
    state = state or {"name": name, "preset": preset, "models": list(paths), "stamp": stamp,
                      "files": {f: str(p) for f, p in (files or {}).items()}, "overrides": list(overrides),
                      "seconds": 0.0, "families": {}}
    state_path = _state_path(root, name)
    _save_state(state_path, state)
    tracker = RunTracker(uri, cfg.tracking.experiment, name, root,
                         {"pipeline.preset": preset, "pipeline.models": ",".join(paths),
                          **{f"pipeline.study.{f}": str(p) for f, p in paths.items()}},
                         tags={"dgm.pipeline": name, RESUME_TAG: str(state_path)}, resume_key=str(state_path))
    result = PipelineResult(name, preset, tracker.run_id, uri, root / "pipelines" / name / "report.md")
    what = DESCRIPTIONS[preset] if not files else "with study files of your own"
    out(f"{name}: {', '.join(paths)} ({what}); MLflow run {tracker.run_id}" + (" (resumed)" if resume else ""))
    try:
        with tracked_run(tracker, f"interrupted (SIGINT or SIGTERM); dgm-dist pipeline --resume {name}") as outcome:
            for family, study in studies.items():
                kept = state["families"].get(family)
                if kept:                                   # finished in an earlier attempt: not run again
                    result.families.append(FamilyResult(**kept))
                    out(f"[{family}] study {kept['study']}: finished earlier, kept")
                    continue
                study = dataclasses.replace(study, name=f"{study.name}-{stamp}")   # never collides with another run
                fam = FamilyResult(family, study.name, metric=study.metric)
                result.families.append(fam)
                again = resume is not None and _study_started(study)
                out(f"[{family}] study {study.name}: {study.trials_planned()} trials" + (" (resumed)" if again else ""))
                t = time.time()
                done = run_study(study, resume=again, verbose=verbose, out=out)
                fam.parent_run_id, fam.best, fam.trials = done.parent_run_id, done.best, len(done.trials)
                fam.seconds = time.time() - t
                fam.report = str(root / "studies" / study.name / "report.md")
                tracker.set_tags({f"dgm.study.{family}": done.parent_run_id})
                if done.interrupted:
                    raise KeyboardInterrupt
                if not done.best:
                    fam.error = "no trial finished"
                elif family in CLASSIFIERS:
                    _export_and_validate(fam, uri, cfg, root / "exports" / name / family, out)
                state["families"][family] = dataclasses.asdict(fam)
                _save_state(state_path, state)
            result.seconds = state["seconds"] + time.time() - started
            _write_report(result, root)
            tracker.log_artifact(result.report.parent, "report")
            tracker.client.log_batch(tracker.run_id, metrics=_summary_metrics(result))
            outcome.status = "FINISHED" if result.passed else "FAILED"
    except KeyboardInterrupt:
        state["seconds"] += time.time() - started
        _save_state(state_path, state)
        hint = "".join(f" --set {o}" for o in overrides if o.startswith("tracking."))
        out(f"pipeline {name} interrupted; its state is saved: dgm-dist pipeline --resume {name}{hint} continues it")
        raise
    return result


STATE_FILE = "state.json"


def _state_path(root: Path, name: str) -> Path:
    return root / "pipelines" / name / STATE_FILE


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """After every finished family: what --resume keeps, and the settings it continues with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(state, indent=2, default=str).encode()))


def _load_state(root: Path, name: str) -> dict[str, Any]:
    path = _state_path(root, name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        there = sorted(p.parent.name for p in (root / "pipelines").glob(f"*/{STATE_FILE}"))
        raise ConfigError(f"--resume {name}: no pipeline of that name under {root / 'pipelines'}"
                          + (f" (there: {', '.join(there)})" if there else "")) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {name}: its state file {path} is unreadable ({e})") from None


def _study_started(study) -> bool:
    """Whether Tune saved state for this study (an interrupted attempt got as far as starting it)."""
    from ray import tune

    from dgm_dist.tuning.study import study_dirs

    experiment_dir = study_dirs(study)[0]
    return "://" not in experiment_dir and tune.Tuner.can_restore(experiment_dir)


def _export_and_validate(fam: FamilyResult, uri: str, cfg, out_dir: Path, out) -> None:
    from dgm_dist.export.exporter import ExportOptions
    from dgm_dist.export.publish import export_and_register
    from dgm_dist.export.validator import format_report, validate_model
    from dgm_dist.training.launcher import storage_path
    from dgm_dist.training.reevaluate import find_checkpoint

    checkpoint = find_checkpoint(fam.best["checkpoint"], storage_path(cfg))
    source = {"mlflow_run_id": fam.best["run_id"], "study": fam.study, "trial": fam.best["trial_id"]}
    exported = export_and_register(checkpoint, ExportOptions(out_dir), source,
                                   lambda line: out(f"[{fam.family}] {line}"), (uri, cfg.tracking.experiment),
                                   run_name=f"export-{fam.study}")
    card, registered = exported["card"], exported["registered"][0]
    validation = validate_model(Path(exported["files"][0]), out=out)
    out("\n".join(f"[{fam.family}] {line}" for line in format_report(validation).splitlines()))
    fam.export = {"file": exported["files"][0], "card": card, "registered": registered}
    fam.validation = {k: validation[k] for k in ("passed", "checks", "latency", "test_metrics")}
    if not validation["passed"]:
        fam.error = "validation failed: " + "; ".join(c["check"] for c in validation["checks"] if not c["passed"])


def _summary_metrics(result: PipelineResult):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [Metric("pipeline_seconds", result.seconds, now, 0)]
    for f in result.families:
        if f.best and isinstance(f.best["metrics"].get(f.metric), float):
            rows.append(Metric(f"{f.family}_best_{f.metric}", f.best["metrics"][f.metric], now, 0))
    return rows


def summary_rows(result: PipelineResult) -> list[dict[str, Any]]:
    """One row per family: the best trial, its test figure, the exported model."""
    rows = []
    for f in result.families:
        best = f.best or {}
        metrics = best.get("metrics", {})
        test = next((k for k in ("test_error", "test_per_digit_error", "test_iw_ll") if k in metrics), None)
        row = {"family": f.family, "study": f.study, "trials": f.trials, "minutes": round(f.seconds / 60, 1),
               "best": ", ".join(f"{k}={v}" for k, v in best.get("params", {}).items()),
               "test_metric": test, "test_value": metrics.get(test) if test else None, "error": f.error}
        if f.export:
            latency = {r["batch"]: r["speedup"] for r in f.validation["latency"] or []}
            onnx_metrics = f.export["card"].get("test_metrics", {})
            row.update(onnx=f.export["file"], registered=f"{f.export['registered']['registered_model']} "
                       f"v{f.export['registered']['version']}", validated=f.validation["passed"],
                       onnx_test_value=onnx_metrics.get((test or "").removeprefix("test_")),
                       ort_speedup_batch_1=latency.get(1), ort_speedup_batch_64=latency.get(64))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = "| family | study | trials | minutes | best trial | test | ONNX (validated) | ORT vs PyTorch, batch 1 / 64 |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        value = r["test_value"]
        test = "–" if value is None else f"{r['test_metric']} {_figure(r['test_metric'], value)}"
        onnx = "–" if "onnx" not in r else f"{r['registered']} ({'passed' if r['validated'] else 'FAILED'})"
        speed = "–" if r.get("ort_speedup_batch_1") is None else \
            f"{r['ort_speedup_batch_1']:.2f}× / {r['ort_speedup_batch_64']:.2f}×"
        lines.append(f"| {r['family']} | `{r['study']}` | {r['trials']} | {r['minutes']} | {r['best'] or '–'} | "
                     f"{test} | {onnx} | {speed} |")
    return "\n".join(lines)


def _figure(metric: str | None, value: float | None) -> str:
    if value is None or metric is None:
        return "–"
    return f"{100 * value:.2f} %" if "error" in metric else f"{value:.2f}"


def format_terminal(rows: list[dict[str, Any]], width: int = 100) -> str:
    """The summary for a terminal: one line per family within `width` columns (the report has the
    full Markdown table). `test` is the best trial's PyTorch figure, `ONNX` the exported model's own
    (ONNX Runtime, the same test set)."""
    fixed = [("family", 6), ("trials", 6), ("min", 5), ("test", 15), ("ONNX", 9)]
    rest = width - sum(w + 2 for _, w in fixed) - 2
    best_w, reg_w = rest // 2, rest - rest // 2

    def cut(text: str, w: int) -> str:
        return text if len(text) <= w else text[:w - 1] + "…"

    lines = ["  ".join([*(f"{h:<{w}}" for h, w in fixed), f"{'best trial':<{best_w}}", "registered"]).rstrip()]
    for r in rows:
        metric = (r["test_metric"] or "").removeprefix("test_")
        test = f"{metric} {_figure(metric, r['test_value'])}" if r["test_value"] is not None else "–"
        onnx = _figure(metric, r.get("onnx_test_value")) if "onnx" in r else "–"
        registered = "–" if "onnx" not in r else f"{r['registered']} ({'passed' if r['validated'] else 'FAILED'})"
        cells = [r["family"], str(r["trials"]), str(r["minutes"]), cut(test, 15), onnx]
        line = "  ".join([*(f"{c:<{w}}" for c, (_, w) in zip(cells, fixed, strict=True)),
                          f"{cut(r['best'] or '–', best_w):<{best_w}}", cut(registered, reg_w)])
        lines.append(line.rstrip() + (f"\n  error: {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


def _write_report(result: PipelineResult, root: Path) -> None:
    """report.md with the summary and each study's report (tables and plots copied beside it)."""
    out = result.report.parent
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {result.name}", "", f"Preset `{result.preset}`: {DESCRIPTIONS[result.preset]}. "
          f"{result.seconds / 60:.1f} minutes. MLflow run `{result.run_id}` at `{result.tracking_uri}`.", "",
          format_table(summary_rows(result)), ""]
    for f in result.families:
        md += [f"## {f.family}: `{f.study}`", ""]
        study_dir = root / "studies" / f.study
        if (study_dir / "report.md").exists():
            text = (study_dir / "report.md").read_text().split("\n", 1)[1]      # without its title
            if (study_dir / "report.png").exists():
                shutil.copy(study_dir / "report.png", out / f"{f.family}.png")
                text = text.replace("(report.png)", f"({f.family}.png)")
            md += [text.strip(), ""]
        if f.export:
            card = f.export["card"]
            md += [f"Exported `{f.export['file']}`: {card['model']} on {card['dataset']}, {card['inference']}; "
                   f"test {json.dumps(card['test_metrics'])} (ONNX Runtime, full test set); registered "
                   f"`{f.export['registered']['model_uri']}`.", ""]
            md += [f"- {'PASS' if c['passed'] else 'FAIL'} {c['check']}" + (f": {c['detail']}" if "detail" in c else "")
                   for c in f.validation["checks"]] + [""]
        if f.error:
            md += [f"**{f.error}**", ""]
    result.report.write_text("\n".join(md))
