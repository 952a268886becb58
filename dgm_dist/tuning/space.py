"""A study file (`tune_spaces/*.yaml`): what to search, how to schedule it, what to report.

    study: lvae_warmup_bn              # the study's name (Ray's experiment, MLflow's parent run)
    description: ...
    base: lvae-bn-wu-mnist-5l          # a preset (or a bare model name)
    set: {optim.epochs: 2000}          # fixed overrides, dotted keys as --set takes them
    parameters:                        # dotted config key -> one distribution
      model.name: {grid: [vae, lvae]}
      optim.warmup_epochs: {choice: [0, 50]}     # also uniform/loguniform: [lo, hi], randint: [lo, hi)
    metric: valid_iw_ll                # default: valid_<the model's main metric>
    mode: max                          # default: the model's direction
    scheduler: {type: asha, grace_period: 100, reduction_factor: 3, max_epochs: 2000}   # or {type: fifo}
    samples: 1                         # repeats of the grid (grid x samples trials)
    concurrent: 2                      # trials at once (default: as many as the resources allow)
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}   # per trial; 0.25 GPUs: 4 share one
    report: {x: optim.warmup_epochs, y: test_iw_ll, lines: model.batch_norm, panels: model.name}

`load_study` checks all of it — every key, every distribution, every value against the config it
will be applied to, the resources against the machine — and raises one `ConfigError` naming the
file, the key and what is allowed, before Ray starts.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgm_dist.config import Config, apply, load_config, preset_or_model, read_yaml
from dgm_dist.errors import ConfigError
from dgm_dist.models.registry import model_spec
from dgm_dist.training.resources import shortfall

BUNDLED = Path(__file__).resolve().parents[1] / "tune_spaces"      # package data (pyproject.toml)
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo")
TOP_KEYS = ("study", "description", "base", "set", "parameters", "metric", "mode", "scheduler", "samples",
            "concurrent", "resources", "report")
RESOURCE_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker")
REPORT_KEYS = ("x", "y", "lines", "panels")


@dataclass(frozen=True)
class Parameter:
    key: str                 # dotted config key
    kind: str                # one of DISTRIBUTIONS
    values: tuple            # grid/choice: the values; uniform/loguniform/randint: (lo, hi)


@dataclass
class Study:
    path: Path
    name: str
    description: str
    base: str
    fixed: dict[str, Any]
    parameters: list[Parameter]
    metric: str
    mode: str
    scheduler: dict[str, Any]
    samples: int
    concurrent: int
    resources: dict[str, float]
    report: dict[str, str]
    base_config: Config = field(repr=False, default=None)
    overrides: list[str] = field(repr=False, default_factory=list)    # the file's `set`, then --set
    cwd: str = "."                                                    # the driver's, for relative paths

    @property
    def max_epochs(self) -> int:
        return int(self.scheduler.get("max_epochs") or self.base_config.optim.epochs)

    def trials_planned(self) -> int:
        grid = math.prod(len(p.values) for p in self.parameters if p.kind == "grid")
        return grid * self.samples

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The run config of one trial: its base (the study's, or the preset the `base` parameter
        picked) with the sampled `params` applied."""
        params = dict(params)
        base = self.base_config if "base" not in params else \
            study_base(str(params.pop("base")), self.overrides, self.scheduler, self.resources, self.path, self.cwd)
        return apply(base, nest(params), origin=f"{self.path} (trial parameters)")


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _fail(path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: '{key}': {message}")


def _mapping(doc: Any, path, key: str) -> dict:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise _fail(path, key, f"expected a mapping, got {type(doc).__name__} {doc!r}")
    return doc


def _parameter(path, key: str, spec: Any, base: Config, overrides: list[str]) -> Parameter:
    where = f"parameters.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _fail(path, where, "expected one distribution, e.g. {grid: [a, b]}; allowed: "
                    + ", ".join(DISTRIBUTIONS))
    (kind, values), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise _fail(path, where, f"unknown distribution '{kind}'; allowed: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        raise _fail(path, where, f"{kind} needs a non-empty list, e.g. {kind}: [1, 2]")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
                or not values[0] < values[1]:
            raise _fail(path, where, f"{kind} needs [low, high] numbers with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise _fail(path, where, f"loguniform needs low > 0, got {values[0]}")
        if kind == "randint" and not all(float(v).is_integer() for v in values):
            raise _fail(path, where, f"randint needs integers [low, high), got {values}")
        probes = [values[0], values[1] - 1 if kind == "randint" else values[1]]
    else:
        probes = values
    if key == "base":             # a preset per value: e.g. the CNN-SPN's and the RNN-SPN's own settings
        if kind not in ("grid", "choice"):
            raise _fail(path, where, "base takes grid or choice of preset names")
        for value in values:
            try:
                preset, model = preset_or_model(str(value))
                load_config(preset, overrides=model + overrides)
            except ConfigError as e:
                raise ConfigError(f"{path}: '{where}': {e}") from None
        return Parameter(key, kind, tuple(map(str, values)))
    for value in probes:          # every value must make a valid run config
        try:
            apply(base, nest({key: value}), origin=f"{path} ({where})")
        except ConfigError as e:
            raise ConfigError(str(e)) from None
    return Parameter(key, kind, tuple(values))


def bundled() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def resolve(target: str | Path) -> Path:
    """A study file, or the name of a bundled study (`lvae_warmup_bn_cpu`, from any directory)."""
    path = Path(target)
    if path.exists() or len(path.parts) > 1:
        return path
    candidate = BUNDLED / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if candidate.is_file():
        return candidate
    raise ConfigError(f"{target}: no such study file, nor a bundled study (bundled: {', '.join(bundled())})")


def load_study(path: str | Path, samples: int | None = None, concurrent: int | None = None,
               overrides: list[str] = (), name: str | None = None) -> Study:
    """Read and check a study file (or a bundled study's name); `samples` and `concurrent` override
    the file's, `overrides` (`--set k=v`, e.g. tracking.root) apply to every trial's config after the
    file's `set`, and `name` runs it under another study name."""
    path = resolve(path)
    doc = read_yaml(path)
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise _fail(path, unknown[0], f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    for required in ("base", "parameters"):
        if required not in doc:
            raise _fail(path, required, "missing; a study needs a base preset and its parameters")
    key = "study (--name)" if name else "study"
    name = str(name or doc.get("study") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or set(name) == {"."}:
        raise _fail(path, key, f"{name!r}: use letters, digits, '-', '_' and '.' (it names directories)")
    fixed = [f"{k}={_as_override(v)}" for k, v in _mapping(doc.get("set"), path, "set").items()] + list(overrides)
    try:
        preset, model = preset_or_model(str(doc["base"]))
        base = load_config(preset, overrides=model + fixed)
    except ConfigError as e:
        raise ConfigError(f"{path}: 'base'/'set': {e}") from None
    params = _mapping(doc["parameters"], path, "parameters")
    if not params:
        raise _fail(path, "parameters", "no parameters to search")
    parameters = [_parameter(path, k, v, base, fixed) for k, v in params.items()]
    spec = model_spec(base.model.name)
    names = {base.model.name}
    for p in parameters:
        if p.key == "model.name":
            names = set(p.values)
        elif p.key == "base":
            names = {load_config(*_preset_args(v, fixed)).model.name for v in p.values}
    modes = {model_spec(n).mode for n in names}
    mode = str(doc.get("mode") or (modes.pop() if len(modes) == 1 else ""))
    if mode not in ("min", "max"):
        raise _fail(path, "mode", f"{mode!r}: choose min or max" if mode else
                    "the models searched disagree on the direction; set mode: min or max")
    metric = str(doc.get("metric") or f"valid_{spec.main_metric}")
    if not metric.startswith(("valid_", "test_", "train_", "best_")):
        raise _fail(path, "metric", f"{metric!r}: a reported metric such as valid_{spec.main_metric}")

    scheduler = dict(_mapping(doc.get("scheduler"), path, "scheduler")) or {"type": "asha"}
    kind = scheduler.setdefault("type", "asha")
    if kind not in SCHEDULERS:
        raise _fail(path, "scheduler.type", f"{kind!r}; allowed: {', '.join(SCHEDULERS)}")
    allowed = {"asha": ("type", "grace_period", "reduction_factor", "max_epochs"), "fifo": ("type", "max_epochs")}[kind]
    for k in scheduler:
        if k not in allowed:
            raise _fail(path, f"scheduler.{k}", f"unknown for {kind}; allowed: {', '.join(allowed)}")
    max_epochs = scheduler.setdefault("max_epochs", base.optim.epochs)
    for k, lo in (("grace_period", 1), ("reduction_factor", 2), ("max_epochs", 1)):
        value = scheduler.get(k, lo)
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise _fail(path, f"scheduler.{k}", f"{scheduler[k]!r}: an integer >= {lo}")
    if kind == "asha":
        scheduler.setdefault("grace_period", 1)
        scheduler.setdefault("reduction_factor", 3)
        if scheduler["grace_period"] > max_epochs:
            raise _fail(path, "scheduler.grace_period",
                        f"{scheduler['grace_period']} is more than max_epochs={max_epochs}")

    resources = _resources(path, _mapping(doc.get("resources"), path, "resources"), base)
    samples = _positive(path, "samples", samples if samples is not None else doc.get("samples", 1))
    fits = _trials_that_fit(resources)
    concurrent = _positive(path, "concurrent", concurrent if concurrent is not None else doc.get("concurrent", fits))
    report = {k: str(v) for k, v in _mapping(doc.get("report"), path, "report").items()}
    for k in report:
        if k not in REPORT_KEYS:
            raise _fail(path, f"report.{k}", f"unknown; allowed: {', '.join(REPORT_KEYS)}")
    searched = {p.key for p in parameters}
    for k in ("x", "lines", "panels"):
        if k in report and report[k] not in searched:
            raise _fail(path, f"report.{k}",
                        f"{report[k]!r} is not a searched parameter ({', '.join(sorted(searched))})")
    report.setdefault("x", parameters[0].key)
    report.setdefault("y", metric.replace("valid_", "test_", 1))

    study = Study(path, name, str(doc.get("description", "")), str(doc["base"]), dict(doc.get("set") or {}),
                  parameters, metric, mode, scheduler, samples, concurrent, resources, report, overrides=fixed)
    study.cwd = os.getcwd()
    study.base_config = study_base(study.base, fixed, scheduler, resources, path, study.cwd)
    return study


def _preset_args(target: str, overrides: list[str]) -> tuple:
    preset, model = preset_or_model(str(target))
    return preset, None, model + overrides


def study_base(target: str, overrides: list[str], scheduler: dict, resources: dict, path, cwd: str) -> Config:
    """A preset (or model) with the study's `set` and the study-wide settings: the scheduler's
    epochs, the trial resources, a report only when the metric is evaluated, and local paths made
    absolute against the driver's `cwd` (Tune runs each trial in a working directory of its own)."""
    cfg = load_config(*_preset_args(target, overrides))
    paths = {"tracking.root": cfg.tracking.root, "tracking.storage_path": cfg.tracking.storage_path,
             "data.data_dir": cfg.data.data_dir}
    absolute = {k: str(Path(cwd, Path(v).expanduser())) for k, v in paths.items() if v and "://" not in v}
    return apply(cfg, nest({**absolute, "optim.epochs": scheduler["max_epochs"],
                            "scaling.workers": resources["workers"],
                            "scaling.cpus_per_worker": resources["cpus_per_worker"],
                            "scaling.use_gpu": resources["gpus_per_worker"] > 0,
                            **({"scaling.gpus_per_worker": resources["gpus_per_worker"]}
                               if resources["gpus_per_worker"] > 0 else {}),
                            # every report evaluates, so the scheduler always sees the metric
                            "scaling.report_every": cfg.scaling.checkpoint_every}), origin=str(path))


def _as_override(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _positive(path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(path, key, f"{value!r}: a whole number >= 1")
    return value


def _resources(path, doc: dict, base: Config) -> dict[str, float]:
    for k in doc:
        if k not in RESOURCE_KEYS:
            raise _fail(path, f"resources.{k}", f"unknown; allowed: {', '.join(RESOURCE_KEYS)}")
    out = {"workers": doc.get("workers", max(1, base.scaling.workers)),
           "cpus_per_worker": doc.get("cpus_per_worker", base.scaling.cpus_per_worker),
           "gpus_per_worker": doc.get("gpus_per_worker", 0)}
    for k, v in out.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise _fail(path, f"resources.{k}", f"{v!r}: a number >= 0")
    if out["workers"] < 1 or not float(out["workers"]).is_integer():
        raise _fail(path, "resources.workers",
                    f"{out['workers']!r}: trials run on Ray Train workers; a whole number >= 1")
    if out["cpus_per_worker"] <= 0:
        raise _fail(path, "resources.cpus_per_worker", "must be > 0")
    g = out["gpus_per_worker"]
    if g > 1 and not float(g).is_integer():
        raise _fail(path, "resources.gpus_per_worker", f"{g}: a fraction of one GPU (<= 1) or a whole number")
    out["workers"] = int(out["workers"])
    missing = None if base.scaling.address or os.environ.get("RAY_ADDRESS") else \
        shortfall(out["workers"], out["cpus_per_worker"], g)              # a cluster is checked once joined
    if missing and missing[0] == "GPUs":
        raise _fail(path, "resources.gpus_per_worker", f"a trial needs {missing[1]:g} GPUs; this machine has "
                    f"{missing[2]} (set gpus_per_worker: 0 for CPU, or run on a cluster)")
    if missing:
        raise _fail(path, "resources", f"a trial needs {out['workers']} x {out['cpus_per_worker']:g} = "
                    f"{missing[1]:g} CPUs; this machine has {missing[2]} (lower workers or cpus_per_worker, "
                    "or run on a cluster)")
    return out


def _trials_that_fit(resources: dict[str, float]) -> int:
    cpus = os.cpu_count() or 1
    by_cpu = int(cpus // (resources["workers"] * resources["cpus_per_worker"]))
    if resources["gpus_per_worker"] > 0:
        import torch

        gpus = torch.cuda.device_count()
        by_gpu = int(gpus // (resources["workers"] * resources["gpus_per_worker"])) if gpus else 1
        return max(1, min(by_cpu, by_gpu))
    return max(1, by_cpu)


def to_tune_space(study: Study) -> dict[str, Any]:
    """Tune's `param_space`: {"params": {dotted key: Tune domain}}."""
    from ray import tune

    domains = {"grid": tune.grid_search, "choice": tune.choice}
    space = {}
    for p in study.parameters:
        if p.kind in domains:
            space[p.key] = domains[p.kind](list(p.values))
        elif p.kind == "randint":
            space[p.key] = tune.randint(int(p.values[0]), int(p.values[1]))
        else:
            space[p.key] = getattr(tune, p.kind)(float(p.values[0]), float(p.values[1]))
    return {"params": space}


def grid_points(study: Study) -> list[dict[str, Any]]:
    """Every combination of the grid parameters (what `samples: 1` runs when all are grids)."""
    grid = [p for p in study.parameters if p.kind == "grid"]
    return [dict(zip([p.key for p in grid], combo, strict=True)) for combo in
            itertools.product(*(p.values for p in grid))]


def plan(study: Study) -> dict[str, Any]:
    """What `dgm-dist tune FILE` would run, without starting Ray (`--dry-run`)."""
    grid = grid_points(study)
    sampled = {p.key: {p.kind: list(p.values)} for p in study.parameters if p.kind != "grid"}
    per_trial = {"workers": study.resources["workers"],
                 "cpus": study.resources["workers"] * study.resources["cpus_per_worker"],
                 "gpus": study.resources["workers"] * study.resources["gpus_per_worker"]}
    trials = study.trials_planned()
    return {"study": study.name, "file": str(study.path), "base": study.base, "set": list(study.overrides),
            "metric": study.metric,
            "mode": study.mode, "scheduler": study.scheduler, "trials": trials, "samples": study.samples,
            "grid": grid, "sampled": sampled, "resources_per_trial": per_trial,
            "concurrent": min(study.concurrent, trials), "fits_here": _trials_that_fit(study.resources),
            "max_epochs_per_trial": study.max_epochs, "max_trial_epochs": trials * study.max_epochs,
            "waves": math.ceil(trials / max(1, min(study.concurrent, trials)))}
