"""What the bottom-up VAE's old objective would report for trained models (docs/results.md §2).

    python bench/vae_kl_bias.py RUN [RUN ...]          # run names, checkpoint dirs or MLflow run ids
    python bench/vae_kl_bias.py --quick                # a small untrained model whose upper layers depend on the lower

For each model, the test ELBO three ways with the SAME draws (3 per test image): the corrected
objective (docs/models.md: q's entropy minus the sampled log p for the VAE's layers below the top),
the old one (closed-form KL given the sampled layer above, at every layer), and the k = 1
importance-weighted bound (sampled log q - log p everywhere, the textbook estimate). The corrected
figure and the k = 1 bound agree up to Monte Carlo error; the old one is off by the bias. For an
LVAE the three agree (its closed forms were always valid).
"""

from __future__ import annotations

import argparse

import torch

import dgm_dist.models.lvae as lvae


def estimates(model: lvae.HierarchicalVAE, x: torch.Tensor, repeats: int = 3, batch: int = 1000) -> dict[str, float]:
    """Mean per image of the three ELBO estimates, the same draws for all three."""
    lower_layers: list[tuple] = []            # what `kl_at_sample` saw, to rebuild the old closed form
    plain = lvae.kl_at_sample

    def recording(z, logvar_q, mu_p, logvar_p):
        lower_layers.append((logvar_q, mu_p, logvar_p))
        return plain(z, logvar_q, mu_p, logvar_p)

    totals = {"corrected": 0.0, "old closed form": 0.0, "k = 1 bound": 0.0}
    lvae.kl_at_sample = recording
    try:
        with torch.no_grad():
            for rep in range(repeats):
                torch.manual_seed(rep)
                for i in range(0, len(x), batch):
                    xb = x[i:i + batch]
                    lower_layers.clear()
                    p = model.infer(xb)
                    recon = model.log_px(xb, p["z"][0])
                    kl = sum(k.sum(-1) for k in p["kl"])
                    old = kl.clone()
                    for j, (logvar_q, mu_p, logvar_p) in enumerate(lower_layers):    # VAE layers 1..L-1
                        old += lvae.kl_normal(p["q_means"][j], logvar_q, mu_p, logvar_p).sum(-1) - p["kl"][j].sum(-1)
                    totals["corrected"] += (recon - kl).sum().item()
                    totals["old closed form"] += (recon - old).sum().item()
                    totals["k = 1 bound"] += (recon + sum(p["log_p"]) - sum(p["log_q"])).sum().item()
    finally:
        lvae.kl_at_sample = plain
    return {k: v / (repeats * len(x)) for k, v in totals.items()}


def trained(target: str) -> tuple[str, lvae.HierarchicalVAE, torch.Tensor]:
    from dgm_dist.config import load_config
    from dgm_dist.data import load_from_config
    from dgm_dist.data.pixels import to_unit
    from dgm_dist.models.registry import model_spec
    from dgm_dist.training import data as training_data
    from dgm_dist.training.launcher import storage_path
    from dgm_dist.training.reevaluate import find_checkpoint, load_trained

    cfg, model, _ = load_trained(find_checkpoint(target, storage_path(load_config())))
    data = training_data.prepare(load_from_config(cfg.data, download=False), cfg.data,
                                 model_spec(cfg.model.name).streams)
    model.prepare_evaluation(training_data.training_inputs(data))
    return cfg.model.name, model.eval(), to_unit(data.eval_sets["test"][0]).flatten(1)


def quick() -> tuple[str, lvae.HierarchicalVAE, torch.Tensor]:
    torch.manual_seed(0)
    model = lvae.HierarchicalVAE(8, latent=(4, 3, 2), hidden=(16, 12, 8)).eval()
    with torch.no_grad():                     # upper layers that depend strongly on the lower ones
        for net in (*model.up[1:], *model.down):
            net.body.net[0].weight.mul_(1.5)
            net.mu.weight.mul_(1.5)
    return "vae", model, torch.rand(20_000, 8).bernoulli()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="trained VAE/LVAE runs")
    parser.add_argument("--quick", action="store_true", help="a small untrained model instead of trained runs")
    args = parser.parse_args()
    if not args.runs and not args.quick:
        parser.error("give one or more runs, or --quick")
    models = [quick()] if args.quick else [trained(r) for r in args.runs]
    print("| run | model | corrected ELBO | old closed form | k = 1 bound | old - corrected |")
    print("|---|---|---|---|---|---|")
    for target, (name, model, x) in zip(args.runs or ["quick"], models, strict=True):
        e = estimates(model, x)
        print(f"| {target} | {name} | {e['corrected']:.3f} | {e['old closed form']:.3f} | {e['k = 1 bound']:.3f} "
              f"| {e['old closed form'] - e['corrected']:+.3f} |")


if __name__ == "__main__":
    main()
