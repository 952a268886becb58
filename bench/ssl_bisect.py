"""Bisect the semi-supervised recipe: the `-cpu` preset against variants that each change one
difference from a plain ADGM, at the same wall-clock budget, watching test error, test NLL and the
labelled - unlabelled ELBO gap over time (docs/results.md §1).

    python bench/ssl_bisect.py --out runs/ssl_bisect [--minutes 6] [--preset adgm-mnist100-cpu]
    python bench/ssl_bisect.py --out runs/ssl_bisect --table

Every arm runs `dgm-dist train PRESET --workers 0 --max-minutes M` in this process (Ray Train's
local mode, so that `sampled-kl`, which is not a config option, applies), one after another:
- `preset`: unchanged;
- `torch-init` (`model.init=torch`): PyTorch's default initialisation of every linear layer instead
  of the original code's (GlorotNormal with the ReLU gain and N(0, 1e-3) biases; N(0, 1e-3)
  mean/variance heads);
- `sampled-kl`: the KL of z as log q(z) - log p(z) at the drawn z (the released code) instead of
  the closed form;
- `labelled-once` (`model.bound_weights=paper`): the labelled ELBO weighted N_l / N (each labelled
  image once per pass, the paper's sum over the data) instead of the released code's equal weight
  of the two means;
- options that are config keys (`--arm "NAME=KEY=VALUE;..."`), e.g. `"no-prior-clip=model.weight_prior=false;
  optim.clip_value=none"`.
Each arm's JSON result and its per-epoch metrics (from MLflow) go to OUT; `--table` prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from pathlib import Path

from dgm_dist.models import dgm
from dgm_dist.models.distributions import log_normal, log_standard_normal, sample_normal


@contextlib.contextmanager
def sampled_kl():
    """ADGM/SDGM bounds with the single-sample KL of z: log q(z|.) - log p(z) at the z drawn."""
    originals = {cls: cls.bound for cls in (dgm.ADGM, dgm.SDGM)}

    def adgm_bound(self, x, a, log_qa, y, beta, eps=None):
        mu, logvar = self.q_z_head(self.q_z(x=x, a=a, y=y))
        z = sample_normal(mu, logvar, eps)
        log_px = self.p_x_head.log_prob(x, self.p_x(y=y, z=z))
        log_pa = log_normal(a, *self.p_a_head(self.p_a(x=x, y=y, z=z)))
        kl = log_normal(z, mu, logvar) - log_standard_normal(z)
        return log_px + beta * (log_pa - log_qa - math.log(self.num_classes) - kl)

    def sdgm_bound(self, x, a, log_qa, y, beta, eps=None):
        mu, logvar = self.q_z_head(self.q_z(x=x, a=a, y=y))
        z = sample_normal(mu, logvar, eps)
        log_pa = log_normal(a, *self.p_a_head(self.p_a(y=y, z=z)))
        log_px = self.p_x_head.log_prob(x, self.p_x(a=a, y=y, z=z))
        kl = log_normal(z, mu, logvar) - log_standard_normal(z)
        return log_px + beta * (log_pa - log_qa - math.log(self.num_classes) - kl)

    dgm.ADGM.bound, dgm.SDGM.bound = adgm_bound, sdgm_bound
    try:
        yield
    finally:
        for cls, bound in originals.items():
            cls.bound = bound


PATCHES = {"preset": contextlib.nullcontext, "sampled-kl": sampled_kl}
# the bisect's differences that are config options now (docs/models.md)
OPTIONS = {"torch-init": ["model.init=torch"], "labelled-once": ["model.bound_weights=paper"]}
ARMS = [*PATCHES, *OPTIONS]
CURVES = ("test_error", "test_nll", "valid_error", "train_labelled_elbo", "train_unlabelled_elbo",
          "train_classification", "test_vote_error", "test_entropy")


def run_arm(out: Path, name: str, preset: str, minutes: float, sets: list[str], patch, root: str | None) -> None:
    from dgm_dist.cli import main as cli

    path = out / f"{name}.json"
    if path.exists():
        return
    args = ["train", preset, "--workers", "0", "--max-minutes", f"{minutes:g}", "--run-name", f"bisect-{preset}-{name}",
            "--json", *(a for s in sets for a in ("--set", s))]
    if root:
        args += ["--set", f"tracking.root={root}"]
    print(f"== {name}: dgm-dist {' '.join(args)}", file=sys.stderr, flush=True)
    buffer = io.StringIO()
    with patch(), contextlib.redirect_stdout(buffer):
        code = cli(args)
    if code != 0:
        sys.exit(f"arm {name} failed with status {code}")
    text = buffer.getvalue()
    result = json.loads(text[text.index("{"):])
    result["curves"] = history(result)
    path.write_text(json.dumps({"arm": name, "preset": preset, "sets": sets, **result}, indent=1))


def history(result: dict) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(result["mlflow"]["tracking_uri"])
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(result["mlflow_run_id"], key),
                                                    key=lambda m: m.step)] for key in CURVES}


def table(out: Path) -> None:
    print("| arm | steps | test error per epoch (%) | test NLL per epoch | class vote error per epoch (%) "
          "| labelled - unlabelled ELBO, last epoch (nats) | final test error (%) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        c = r["curves"]
        gap = c["train_labelled_elbo"][-1][1] - c["train_unlabelled_elbo"][-1][1]
        vote = " ".join(f"{100 * v:.0f}" for _, v in c.get("test_vote_error", [])) or "–"
        print(f"| {r['arm']} | {r['steps']:,} | {' '.join(f'{100 * v:.1f}' for _, v in c['test_error'])} "
              f"| {' '.join(f'{v:.2f}' for _, v in c['test_nll'])} | {vote} | {gap:.1f} "
              f"| {100 * r['test_error']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ssl_bisect"))
    parser.add_argument("--preset", default="adgm-mnist100-cpu")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--arms", nargs="*", default=ARMS, choices=ARMS, help=f"of {', '.join(ARMS)}")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=KEY=VALUE;...",
                        help="an arm that sets config keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every arm")
    parser.add_argument("--root", help="tracking.root of the runs (default: runs)")
    parser.add_argument("--table", action="store_true", help="print the table of OUT and exit")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for name in args.arms:
            run_arm(args.out, name, args.preset, args.minutes, [*args.set, *OPTIONS.get(name, [])],
                    PATCHES.get(name, contextlib.nullcontext), args.root)
        for spec in args.arm:
            name, _, sets = spec.partition("=")
            run_arm(args.out, name, args.preset, args.minutes, [*args.set, *sets.split(";")], contextlib.nullcontext,
                    args.root)
    table(args.out)


if __name__ == "__main__":
    main()
