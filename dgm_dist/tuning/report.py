"""`dgm-dist tune report STUDY`: the trials table (parameters -> metrics) as markdown and a plot that
answers the study's question — the report's `y` against `x`, one line per value of `lines`, one
panel per value of `panels` — written beside the runs and logged to the study's MLflow parent run."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgm_dist.errors import ConfigError
from dgm_dist.tuning.study import STUDY_TAG, best_trial, collect_trials


@dataclass
class Report:
    markdown: str
    paths: list[Path]
    parent_run_id: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None


def find_study(client, experiment: str, name: str):
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], f"tags.`{STUDY_TAG}` = '{name}' and tags.`mlflow.parentRunId` IS NULL",
        order_by=["attributes.start_time DESC"], max_results=50)
    runs = [r for r in runs if "study.parameters" in r.data.params]
    if not runs:
        raise ConfigError(f"no study named '{name}' in MLflow experiment '{experiment}'; run "
                          f"`dgm-dist tune tune_spaces/<file>.yaml` first, or check the tracking URI")
    return runs[0]


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def _percent(key: str, value: Any) -> str:
    return f"{100 * value:.2f} %" if key.endswith("error") and isinstance(value, float) else _fmt(value)


def table(trials: list[dict[str, Any]], keys: list[str], metric: str, y: str, best_id: str | None) -> str:
    columns = [metric] + [c for c in (y, "best_epoch", "epoch") if c != metric]
    head = ["trial", *keys, *columns, "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        status = t["status"] if t["status"] != "FINISHED" else ("stopped (ASHA)" if t["stopped_by"] else "finished")
        if t.get("error"):
            status = f"FAILED: {t['error'].splitlines()[-1][:90]}"
        mark = " **best**" if t["trial_id"] == best_id else ""
        cells = [f"`{t['trial_id']}`{mark}", *[_fmt(t["params"].get(k, "")) for k in keys],
                 *[_percent(c, t["metrics"].get(c, "")) if c in t["metrics"] else "–" for c in columns], status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(trials: list[dict[str, Any]], spec: dict[str, str], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, line, panel = spec["x"], spec["y"], spec.get("lines"), spec.get("panels")
    done = [t for t in trials if t["status"] == "FINISHED" and y in t["metrics"]]
    if not done:
        return None
    panels = sorted({str(t["params"].get(panel, "")) for t in done}) if panel else [""]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False, sharey=True)
    numeric_x = all(isinstance(t["params"].get(x), (int, float)) for t in done)
    for ax, p in zip(axes[0], panels, strict=True):
        series: dict[str, list[tuple]] = defaultdict(list)
        for t in done:
            if panel and str(t["params"].get(panel, "")) != p:
                continue
            series[str(t["params"].get(line, "")) if line else y].append((t["params"].get(x), t["metrics"][y]))
        for label, pts in sorted(series.items()):
            pts = sorted(pts, key=lambda v: v[0] if numeric_x else str(v[0]))
            xs = [v[0] if numeric_x else str(v[0]) for v in pts]
            ax.plot(xs, [v[1] for v in pts], marker="o", label=f"{line.split('.')[-1]}={label}" if line else label)
        ax.set_title(f"{panel.split('.')[-1]}={p}" if panel else "", fontsize=9)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(y)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(name: str, uri: str, experiment: str, out_root: Path, log: bool = True) -> Report:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = find_study(client, experiment, name)
    params = parent.data.params
    metric, mode = params["study.metric"], params["study.mode"]
    spec = json.loads(params.get("study.report", "{}"))
    searched = list(json.loads(params["study.parameters"]))
    trials = collect_trials(uri, parent.info.run_id)
    best = best_trial(trials, metric, mode)
    out = Path(out_root) / name
    paths = []
    picture = plot(trials, spec, out / "report.png") if spec.get("x") and spec.get("y") else None
    finished = sum(t["status"] == "FINISHED" for t in trials)
    md = [f"# Study `{name}`", "", *([params["study.description"], ""] if params.get("study.description") else []),
          f"Base `{params.get('study.base')}`, metric `{metric}` ({mode}), scheduler "
          f"`{params.get('study.scheduler')}`; {len(trials)} trial(s), {finished} finished, "
          f"{sum(t['status'] == 'FAILED' for t in trials)} failed. MLflow parent run `{parent.info.run_id}`.", "",
          table(trials, searched, metric, spec.get("y", metric), best["trial_id"] if best else None), ""]
    if best:
        md += [f"Best trial `{best['trial_id']}` ({', '.join(f'{k}={v}' for k, v in best['params'].items())}): "
               f"{metric} {_percent(metric, best['metrics'][metric])}; checkpoint `{best.get('checkpoint')}`.", ""]
    if picture:
        md += [f"![{spec['y']} vs {spec['x']}](report.png)", ""]
        paths.append(picture)
    text = "\n".join(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    paths.insert(0, out / "report.md")
    if log:
        for p in paths:
            client.log_artifact(parent.info.run_id, str(p), "report")
    return Report(text, paths, parent.info.run_id, trials, best)
