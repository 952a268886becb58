"""The math of the hierarchical VAE and the Ladder VAE (docs/models.md)."""

import math

import numpy as np
import pytest
import torch

from dgm_dist.config import load_config
from dgm_dist.data.catalog import Dataset
from dgm_dist.models.distributions import log_normal, sample_normal
from dgm_dist.models.lvae import HierarchicalVAE, LadderVAE, kl_normal, merge
from dgm_dist.training import data as D
from dgm_dist.training import schedules


def test_precision_weighted_merge_is_the_product_of_gaussians():
    mu_hat, var_hat, mu_p, var_p = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([-2.0]), torch.tensor([2.0])
    mu, logvar = merge(mu_hat, var_hat.log(), mu_p, var_p.log())
    var = 1 / (1 / 0.5 + 1 / 2.0)
    assert logvar.exp().item() == pytest.approx(var) and mu.item() == pytest.approx((1.0 / 0.5 - 2.0 / 2.0) * var)
    # the product of the two densities is proportional to N(mu, var): the log-ratio is constant in z
    z = torch.linspace(-3, 3, 7)[:, None]
    ratio = log_normal(z, mu_hat, var_hat.log()) + log_normal(z, mu_p, var_p.log()) - log_normal(z, mu, logvar)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-5)


def test_analytic_kl_between_gaussians_agrees_with_monte_carlo():
    torch.manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = torch.randn(4), torch.randn(4) * 0.3, torch.randn(4), torch.randn(4) * 0.3
    z = sample_normal(mu_q.expand(400_000, 4), lv_q.expand(400_000, 4))
    mc = (log_normal(z, mu_q, lv_q) - log_normal(z, mu_p, lv_p)).mean()
    assert mc.item() == pytest.approx(kl_normal(mu_q, lv_q, mu_p, lv_p).sum().item(), abs=0.02)


def _model(cls, x_dim=6, **kw):
    torch.manual_seed(0)
    return cls(x_dim, latent=(4, 3, 2), hidden=(16, 12, 8), **kw).eval()


@pytest.mark.parametrize("cls", [HierarchicalVAE, LadderVAE])
@pytest.mark.parametrize("output", ["bernoulli", "gaussian"])
@torch.no_grad()
def test_iw_bound_with_the_bottom_up_pass_shared_equals_repeating_x_for_every_sample(cls, output):
    """The speed-up of the IW evaluation (the deterministic part of q once per example, x broadcast)
    computes the same function with the same draws as repeating x k times; in chunks too."""
    model = _model(cls, output=output, batch_norm="running")
    with torch.no_grad():                                    # non-trivial batch-norm statistics
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(5, 6) if output == "gaussian" else torch.rand(5, 6).bernoulli()
    for max_rows in (50_000, 12):                             # one chunk; chunks of 2 samples
        torch.manual_seed(3)
        fast = model.iw_log_likelihood(x, 7, max_rows=max_rows)
        torch.manual_seed(3)
        slow = model.iw_log_likelihood(x, 7, max_rows=max_rows, shared_bottom_up=False)
        assert fast.shape == (5,) and torch.allclose(fast, slow, atol=1e-5, rtol=0)
    torch.manual_seed(4)
    assert not torch.allclose(model.iw_log_likelihood(x, 7), fast, atol=1e-3)   # the draws matter


@torch.no_grad()
def test_iw_bound_rises_with_k_and_stays_below_the_exact_log_likelihood():
    """A one-layer VAE with a 1-d latent: log p(x) by quadrature over z is exact enough to compare."""
    torch.manual_seed(0)
    model = HierarchicalVAE(3, latent=(1,), hidden=(8,)).eval()
    with torch.no_grad():                                 # p(x|z) depends on z: q is not the posterior
        model.decoder.net[0].weight.mul_(4.0)
    x = torch.tensor([[1.0, 0.0, 1.0]])
    z = torch.linspace(-10, 10, 40_001)[:, None]
    log_joint = model.log_px(x.expand(len(z), 3), z) - 0.5 * (math.log(2 * math.pi) + z[:, 0] ** 2)
    exact = (torch.logsumexp(log_joint, 0) + math.log(20 / 40_000)).item()
    torch.manual_seed(1)
    bounds = [torch.stack([model.iw_log_likelihood(x, k) for _ in range(200)]).mean().item() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2] <= exact + 1e-3
    assert exact - bounds[2] < 0.05


def test_warmup_is_counted_in_steps_whatever_the_worker_count():
    ds = Dataset("toy", tuple("0123456789"), {"train_x": np.zeros((1100, 2, 2), np.uint8),
                                              "train_y": np.arange(1100) % 10,
                                              "test_x": np.zeros((10, 2, 2), np.uint8), "test_y": np.arange(10)})
    d = D.prepare(ds, load_config(overrides=["data.validation=100"]).data, "unsupervised")
    per_epoch = {w: D.steps_per_epoch(d, 100, w) for w in (1, 2, 4)}
    assert per_epoch == {1: 10, 2: 10, 4: 10}                  # the batch is global
    total = schedules.warmup_steps(200, per_epoch[1])
    assert [schedules.kl_weight(s, total) for s in (0, 1000, 2000, 5000)] == [0.0, 0.5, 1.0, 1.0]


@torch.no_grad()
def test_full_training_set_batch_norm_statistics_equal_a_manual_computation():
    model = _model(LadderVAE, batch_norm="full_train")
    x = torch.rand(500, 6).bernoulli()
    model.prepare_evaluation(x)
    first_linear, first_bn = model.up[0].body.net[0], model.up[0].body.net[1]
    h = first_linear(x)                                   # the first batch norm's input: no sampling before it
    torch.testing.assert_close(first_bn.running_mean, h.mean(0))
    torch.testing.assert_close(first_bn.running_var, h.var(0), rtol=1e-4, atol=1e-6)   # unbiased, as PyTorch stores
    assert first_bn.momentum == 0.1                       # training statistics resume afterwards


@torch.no_grad()
def test_ladder_passes_posterior_samples_down():
    """The top-down network of layer i must see the POSTERIOR sample z_{i+1} (a public port passed
    prior samples: docs/models.md)."""
    model = _model(LadderVAE)
    seen = []
    model.down[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    x = torch.rand(5, 6).bernoulli()
    torch.manual_seed(3)
    out = model.infer(x)
    assert torch.equal(seen[0], out["z"][2])             # what went down is what q sampled at the top
    model.infer(x, use_means=True)                       # with means: the bottom-up mean of the top layer
    h = x
    for net in model.up:
        h = net(h)[0]
    torch.testing.assert_close(seen[1], h)               # a prior draw would not depend on x at all


def test_shared_or_separate_generative_top_down_networks():
    shared, separate = _model(LadderVAE, share=True), _model(LadderVAE, share=False)
    assert shared.prior is shared.down and separate.prior is not separate.down
    assert sum(p.numel() for p in separate.parameters()) > sum(p.numel() for p in shared.parameters())
    vae = _model(HierarchicalVAE)
    assert vae.prior is vae.down                          # the VAE's top-down networks are only generative


@torch.no_grad()
def test_shared_top_down_network_runs_once_per_layer_and_pass():
    """share=True (the paper): q's top-down output IS p(z_i|z_{i+1}) at the posterior sample, so one
    pass computes it once; share=False runs the generative network of its own as well."""
    x = torch.rand(5, 6).bernoulli()
    for share in (True, False):
        model = _model(LadderVAE, share=share)
        seen: list[str] = []
        model.down[0].register_forward_hook(lambda *a, log=seen: log.append("down"))
        if not share:
            model.own_prior[0].register_forward_hook(lambda *a, log=seen: log.append("prior"))
        out = model.infer(x)
        assert seen == (["down"] if share else ["down", "prior"])
        mu_p, logvar_p, _ = model.prior[0](out["z"][1])
        torch.testing.assert_close(out["log_p"][0], log_normal(out["z"][0], mu_p, logvar_p))


def test_widths_and_variance_bias_as_the_original_code():
    """casperkaae/LVAE: top-down MLPs from z_{i+1} have hidden[i+1] units, the LVAE's own generative
    ones hidden[i]; variance heads start with bias 1; batch norm on the heads is an option."""
    vae, lvae = _model(HierarchicalVAE), _model(LadderVAE, share=False)
    hidden = (16, 12, 8)
    for i in range(2):
        assert vae.down[i].body.net[0].out_features == hidden[i + 1] == lvae.down[i].body.net[0].out_features
        assert lvae.own_prior[i].body.net[0].out_features == hidden[i]
        assert vae.up[i].body.net[0].out_features == hidden[i]
    assert all(torch.equal(g.var.bias, torch.ones_like(g.var.bias)) for g in (*vae.up, *vae.down))
    assert all(not g.mu.bias.any() for g in (*vae.up, *vae.down))
    plain = sum(isinstance(m, torch.nn.BatchNorm1d) for m in _model(LadderVAE, batch_norm="running").modules())
    heads = sum(isinstance(m, torch.nn.BatchNorm1d)
                for m in _model(LadderVAE, batch_norm="running", batch_norm_heads=True).modules())
    assert heads == plain + 2 * (3 + 2)                   # a mean and a variance head per Gaussian
    with pytest.raises(ValueError, match="model.batch_norm_heads=true needs batch norm"):
        _model(LadderVAE, batch_norm_heads=True)


@torch.no_grad()
def test_active_units_count_posterior_means_that_vary_over_the_data():
    model = _model(HierarchicalVAE)
    sums = model.eval_sums(torch.rand(50, 6).bernoulli())
    metrics = model.summarize({k.removesuffix("_sum"): (v / 50).tolist() for k, v in sums.items()})
    assert 0 <= metrics["active_units1"] <= 4 and metrics["active_units"] == sum(
        metrics[f"active_units{i}"] for i in (1, 2, 3))
    assert metrics["iw_ll"] >= metrics["elbo"] - 1.0                      # k = 100 vs one sample


def _dependent_upper_layers(cls, scale: float = 1.5):
    """A 3-layer model whose upper posteriors q(z_i|z_{i-1}) (VAE) and top-down priors depend strongly
    on the layer below/above: the case an untrained model hides (docs/models.md, the objective)."""
    model = _model(cls, x_dim=8)
    nets = list(model.up[1:]) + list(model.down)
    with torch.no_grad():
        for net in nets:
            net.body.net[0].weight.mul_(scale)
            net.mu.weight.mul_(scale)
    return model


@pytest.mark.parametrize("scale", [1.0, 1.5])
@pytest.mark.parametrize("cls", [HierarchicalVAE, LadderVAE])
@torch.no_grad()
def test_training_elbo_equals_the_one_sample_importance_bound_where_upper_layers_depend_on_lower(cls, scale):
    """The training loss's ELBO must be an unbiased estimate of the ELBO, whose k = 1 importance-
    weighted bound (sampled log-densities) is the textbook estimate. With the same draws for both
    (the same seed: loss and bound sample z in the same order), the paired difference has a small
    Monte Carlo error, so a bias of 0.3 nats fails by a wide margin. A closed-form KL of a bottom-up
    VAE layer given its sampled child z_{i+1} is biased at scale 1.5 (+0.63 nats on the old code)."""
    model = _dependent_upper_layers(cls, scale)
    x = torch.rand(50, 8).bernoulli().repeat(40, 1)
    diffs = []
    for chunk in range(40):
        torch.manual_seed(100 + chunk)
        elbo = model.loss(x)[1]["elbo_sum"].item() / len(x)
        torch.manual_seed(100 + chunk)
        diffs.append(elbo - model.iw_log_likelihood(x, 1).mean().item())
    diffs = torch.tensor(diffs, dtype=torch.float64)
    bias, stderr = diffs.mean().item(), (diffs.std() / len(diffs) ** 0.5).item()
    assert 4 * stderr < 0.1                              # the test can see a 0.3-nat bias
    assert abs(bias) < max(4 * stderr, 0.02), f"training ELBO - k=1 bound = {bias:.3f} +- {stderr:.3f} nats"
