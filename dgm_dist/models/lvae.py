"""Hierarchical VAE and Ladder VAE (Sønderby et al. 2016; docs/models.md).

VAE:   q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1});             p(z_L) p(z_{L-1}|z_L) ... p(x|z_1)
LVAE:  a deterministic bottom-up pass d_i = MLP(mu_hat_{i-1}) gives (mu_hat_i, var_hat_i) (the code's
       `only_mu_up`); then top-down, z_L ~ N(mu_hat_L, var_hat_L) and for i = L-1 .. 1 a top-down MLP of
       the POSTERIOR sample z_{i+1} gives (mu_p, var_p), merged with the bottom-up term by precision:
           var_q = 1 / (1/var_hat + 1/var_p),   mu_q = (mu_hat/var_hat + mu_p/var_p) var_q,
       and z_i ~ N(mu_q, var_q). The generative p(z_i|z_{i+1}) is the same top-down network
       (`share=True`, the paper's LVAE) or its own (`share=False`, the released code's default).

Every stochastic layer has a 2-layer MLP with leaky ReLU (leakiness 0.01, Lasagne's default); variances
come from a softplus (plus 1e-5, the code's eps) whose bias starts at 1, as the original's. The widths
follow the original code: the bottom-up MLP of layer i and the decoder p(x|z_1) have `hidden[i]`
(`hidden[0]`) units; every top-down MLP from z_{i+1} (the VAE's generative p(z_i|z_{i+1}), the LVAE's
top-down q and shared p) has `hidden[i+1]`; the LVAE's own generative networks (`share=False`) have
`hidden[i]`. Batch norm, when on, follows every hidden dense layer, and with `batch_norm_heads` the
mean/variance heads too (the original normalised them; docs/models.md).

Training bound (warm-up weight beta on every layer's KL term, per optimizer step):
    log p(x|z_1) - beta * sum_i E_q[log q(z_i|.) - log p(z_i|z_{i+1})]
Each layer's term is computed with the lowest-variance estimate that is still unbiased:
- the LVAE, every layer, and the VAE's top layer: the closed-form KL(q(z_i|.) || p(z_i|z_{i+1})) given
  the sampled parent z_{i+1}. Valid because z_{i+1} is drawn before z_i (LVAE: q runs top-down like p)
  or p has no parent (p(z_L) = N(0, I)), so integrating z_i out leaves the parent's distribution alone.
- the VAE's layers below the top: q(z_{i+1}|z_i) is drawn FROM z_i, so z_{i+1} depends on z_i and the
  closed form given z_{i+1} is not the ELBO (off by 0.3-6.3 nats, either way, on trained models:
  docs/results.md §2). Here the term is q's analytic entropy minus log p(z_i|z_{i+1}) at the
  joint draw.
The per-layer terms are the metrics `kl_layer<i>`: summed, they are KL(q(z|x) || p(z)) in expectation
(the original code's `KL_qp`). The importance-weighted bound with k samples,
log mean_k exp(log p(x, z^k) - log q(z^k|x)), uses sampled log-densities; k = 1 is the ELBO in
expectation (tests/test_lvae.py checks both on a model whose upper layers depend on the lower).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.data.pixels import to_unit
from dgm_dist.models.distributions import log_bernoulli, log_normal, log_standard_normal

VAR_EPS = 1e-5


class Dense(nn.Module):
    """`depth` dense layers of `width`, each followed by optional batch norm and leaky ReLU."""

    def __init__(self, in_features: int, width: int, depth: int = 2, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            lin = nn.Linear(in_features, width)
            nn.init.xavier_normal_(lin.weight, gain=nn.init.calculate_gain("relu"))
            nn.init.zeros_(lin.bias)
            layers += [lin] + ([nn.BatchNorm1d(width)] if batch_norm else []) + [nn.LeakyReLU(0.01)]
            in_features = width
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def head(in_features: int, out_features: int, bias: float, batch_norm: bool) -> nn.Module:
    """A mean or variance output: GlorotNormal(1) weights, a constant bias (the variance's 1.0, so the
    softplus starts at 1.31, as the original's), then batch norm if asked (its shift replaces the bias)."""
    lin = nn.Linear(in_features, out_features)
    nn.init.xavier_normal_(lin.weight)
    nn.init.constant_(lin.bias, bias)
    return nn.Sequential(lin, nn.BatchNorm1d(out_features)) if batch_norm else lin


class Gaussian(nn.Module):
    """MLP -> (mean, log-variance) with variance = softplus(.) + 1e-5."""

    def __init__(self, in_features: int, width: int, out_features: int, batch_norm: bool,
                 batch_norm_heads: bool = False):
        super().__init__()
        self.body = Dense(in_features, width, 2, batch_norm)
        self.mu = head(width, out_features, 0.0, batch_norm_heads)
        self.var = head(width, out_features, 1.0, batch_norm_heads)

    def forward(self, h: torch.Tensor):
        d = self.body(h)
        return self.mu(d), torch.log(F.softplus(self.var(d)) + VAR_EPS), d


def merge(mu_hat, logvar_hat, mu_p, logvar_p):
    """Precision-weighted combination of two Gaussians (LVAE eq. for q(z_i|.))."""
    prec_hat, prec_p = torch.exp(-logvar_hat), torch.exp(-logvar_p)
    var = 1.0 / (prec_hat + prec_p)
    return (mu_hat * prec_hat + mu_p * prec_p) * var, torch.log(var)


def kl_normal(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per unit (not summed)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0)


def kl_at_sample(z, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """-H(N(., var_q)) - log N(z; mu_p, var_p) per unit: for z ~ q it is unbiased for
    E_q[log q(z) - log p(z)] even when (mu_p, var_p) were computed from a draw that depends on z
    (the bottom-up VAE's layers below the top). Where they do not, its mean is `kl_normal`."""
    return 0.5 * (logvar_p - logvar_q - 1.0 + (z - mu_p).pow(2) / logvar_p.exp())


class HierarchicalVAE(nn.Module):
    ladder = False

    def __init__(self, x_dim: int, latent=(64, 32, 16, 8, 4), hidden=(512, 256, 128, 64, 32),
                 output: str = "bernoulli", batch_norm: str = "off", share: bool = True, iw_samples: int = 100,
                 batch_norm_heads: bool = False):
        super().__init__()
        if len(hidden) != len(latent):
            raise ValueError(f"model.hidden needs one width per stochastic layer ({len(latent)}), got {len(hidden)}")
        if batch_norm_heads and batch_norm == "off":
            raise ValueError("model.batch_norm_heads=true needs batch norm: set model.batch_norm=running or full_train")
        self.latent, self.output, self.iw_samples, self.batch_norm = tuple(latent), output, iw_samples, batch_norm
        bn, L = batch_norm != "off", len(latent)
        ins = [x_dim, *latent[:-1]]
        self.up = nn.ModuleList(Gaussian(i, h, z, bn, batch_norm_heads)
                                for i, h, z in zip(ins, hidden, latent, strict=True))
        # top-down from z_{i+1}, `hidden[i+1]` wide as the original: the VAE's generative networks;
        # the LVAE's top-down inference networks, which p shares (`share`) or not
        self.down = nn.ModuleList(Gaussian(latent[i + 1], hidden[i + 1], latent[i], bn, batch_norm_heads)
                                  for i in range(L - 1))
        self.own_prior = nn.ModuleList(Gaussian(latent[i + 1], hidden[i], latent[i], bn, batch_norm_heads)
                                       for i in range(L - 1)) if self.ladder and not share else None
        self.decoder = Dense(latent[0], hidden[0], 2, bn)
        self.x_mu = head(hidden[0], x_dim, 0.0, False)       # the output is never normalised (the code's default)
        self.x_var = head(hidden[0], x_dim, 1.0, False) if output == "gaussian" else None

    @property
    def prior(self) -> nn.ModuleList:
        return self.own_prior if self.own_prior is not None else self.down

    @torch.no_grad()
    def prepare_evaluation(self, train_x: torch.Tensor, seed: int = 0) -> None:
        """`batch_norm=full_train`: batch-norm statistics recomputed on the whole training set in one
        batch before evaluation, as the original code did (docs/models.md). The draw is seeded, so
        every worker computes the same statistics."""
        if self.batch_norm != "full_train":
            return
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm1d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None                        # cumulative: one batch gives its exact statistics
        was_training = self.training
        self.train()
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        self.loss(train_x)
        torch.set_rng_state(state)
        self.train(was_training)
        for bn in bns:
            bn.momentum = 0.1

    # ---- one pass: posterior samples, per-layer log-densities and KLs ---------------------------
    def bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The part of q that depends on x alone, so is the same for every sample of z: the LVAE's
        whole deterministic bottom-up pass, (mu_hat, logvar_hat) of every layer; the VAE's q(z_1|x)."""
        if not self.ladder:
            return [self.up[0](x)[:2]]
        ups, h = [], x
        for net in self.up:                           # only_mu_up: each layer takes the mean below
            mu_hat, logvar_hat, _ = net(h)
            ups.append((mu_hat, logvar_hat))
            h = mu_hat
        return ups

    def infer(self, x: torch.Tensor, use_means: bool = False, samples: int = 1) -> dict[str, list]:
        """Samples z_1..z_L from q (or its means), with log q, log p and each layer's KL term (module
        docstring: closed form where that is unbiased, entropy minus sampled log p where not);
        `q_means` are E_q[z_i | parent] for active units. With `samples` = s every example gets s
        draws (rows sample-major, s * B); the bottom-up part runs once per example."""
        L = len(self.latent)
        draw = (lambda mu, logvar: mu) if use_means else \
            (lambda mu, logvar: mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
        ups = self.bottom_up(x)
        if samples > 1:                               # repeat copies: not in the training step
            ups = [(mu.repeat(samples, 1), logvar.repeat(samples, 1)) for mu, logvar in ups]
        z, q, top_down = [None] * L, [None] * L, [None] * L
        if self.ladder:
            q[L - 1] = ups[L - 1]
            z[L - 1] = draw(*q[L - 1])
            for i in range(L - 2, -1, -1):            # top-down from the POSTERIOR sample z_{i+1}
                top_down[i] = self.down[i](z[i + 1])[:2]
                q[i] = merge(*ups[i], *top_down[i])
                z[i] = draw(*q[i])
        else:
            q[0] = ups[0]
            z[0] = draw(*q[0])
            for i in range(1, L):
                q[i] = self.up[i](z[i - 1])[:2]
                z[i] = draw(*q[i])
        out = {"z": z, "log_q": [], "log_p": [], "kl": [], "q_means": [m for m, _ in q]}
        for i in range(L):
            if i == L - 1:
                p = (torch.zeros_like(z[i]), torch.zeros_like(z[i]))
            elif self.ladder and self.own_prior is None:
                p = top_down[i]                        # shared: the top-down output already computed
            else:
                p = self.prior[i](z[i + 1])[:2]
            out["log_q"].append(log_normal(z[i], *q[i]))
            out["log_p"].append(log_standard_normal(z[i]) if i == L - 1 else log_normal(z[i], *p))
            closed_form = self.ladder or i == L - 1    # the parent z_{i+1} was drawn before z_i
            out["kl"].append(kl_normal(*q[i], *p) if closed_form else kl_at_sample(z[i], q[i][1], *p))
        return out

    def log_px(self, x: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """log p(x|z_1) per row of z1, which may hold several samples per example (sample-major):
        x is broadcast over them, never copied."""
        d = self.decoder(z1)
        shape = (-1, *x.shape)
        if self.x_var is None:
            return log_bernoulli(x, self.x_mu(d).view(shape)).reshape(-1)
        logvar = torch.log(F.softplus(self.x_var(d)) + VAR_EPS)
        return log_normal(x, self.x_mu(d).view(shape), logvar.view(shape)).reshape(-1)

    # ---- objectives -----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None, kl_weight: float = 1.0):
        x = x.flatten(1)
        return self.objective(x, self.infer(x), kl_weight)

    def objective(self, x: torch.Tensor, p: dict[str, list], kl_weight: float = 1.0):
        """The warmed-up negative ELBO of one pass `p` of `infer(x)`, and its metric sums."""
        recon = self.log_px(x, p["z"][0])
        kl = torch.stack([k.sum(-1) for k in p["kl"]], -1)                     # (B, L)
        loss = -(recon - kl_weight * kl.sum(-1)).mean()
        n = len(x)
        return loss, {"elbo_sum": (recon - kl.sum(-1)).detach().double().sum(),
                      "recon_sum": recon.detach().double().sum(), "kl_sum": kl.detach().double().sum(),
                      "kl_weight_sum": torch.tensor(kl_weight * n, dtype=torch.float64)}

    forward = loss   # the training loop calls model(**batch): DDP synchronises gradients through forward

    @torch.no_grad()
    def iw_log_likelihood(self, x: torch.Tensor, k: int, max_rows: int | None = None,
                          shared_bottom_up: bool = True) -> torch.Tensor:
        """log (1/k) sum_k p(x, z^k) / q(z^k|x) per example, the k samples batched in chunks of at
        most `max_rows` rows (examples x samples). The deterministic bottom-up part of q runs once
        per example and chunk, not once per sample (`shared_bottom_up=False` repeats x k times
        instead: the same function with the same draws, kept as the benchmark's baseline)."""
        x = x.flatten(1)
        if max_rows is None:
            # bench/iw_eval.py: on a CPU chunks of 5 000 rows run 1.7x faster than 50 000 (the
            # activations stay in cache); a GPU wants big batches
            max_rows = 5_000 if x.device.type == "cpu" else 100_000
        chunk = max(1, max_rows // max(1, len(x)))
        parts = []
        for start in range(0, k, chunk):
            s = min(chunk, k - start)
            xs, reps = (x, s) if shared_bottom_up else (x.repeat(s, 1), 1)
            p = self.infer(xs, samples=reps)
            log_w = self.log_px(xs, p["z"][0]) + sum(p["log_p"]) - sum(p["log_q"])
            parts.append(log_w.view(s, len(x)))
        return torch.logsumexp(torch.cat(parts), 0) - math.log(k)

    @torch.no_grad()
    def eval_sums(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Full-set sums: the ELBO (1 sample), the IW bound with `iw_samples`, each layer's KL term,
        and first/second moments of each layer's posterior mean (for active units)."""
        x = x.flatten(1)
        p = self.infer(x)                              # one draw: the ELBO and its per-layer terms
        _, sums = self.objective(x, p)
        out = {"elbo_sum": sums["elbo_sum"], "recon_sum": sums["recon_sum"]}
        out["iw_ll_sum"] = self.iw_log_likelihood(x, self.iw_samples).double().sum()
        means = self.infer(x, use_means=True)["q_means"]
        for i, (kl, m) in enumerate(zip(p["kl"], means, strict=True)):
            out[f"kl_layer{i + 1}_sum"] = kl.sum(-1).double().sum()
            out[f"kl_units{i + 1}_sum"] = kl.double().sum(0)                      # vector: the figure
            out[f"mean{i + 1}_sum"] = m.double().sum(0)                            # vectors: active units
            out[f"mean_sq{i + 1}_sum"] = m.double().pow(2).sum(0)
        return out

    def summarize(self, metrics: dict) -> dict:
        """Replace the moment vectors by active units per layer: Cov_x(E_q[z]) > 0.01 (paper sec. 4).
        The KL of every unit (`kl_units<i>`, lists) stays, for the paper's figure."""
        out = {k: v for k, v in metrics.items() if not k.startswith("mean")}
        for i in range(1, len(self.latent) + 1):
            mean, sq = torch.tensor(metrics[f"mean{i}"]), torch.tensor(metrics[f"mean_sq{i}"])
            out[f"active_units{i}"] = int(((sq - mean.pow(2)) > 0.01).sum())
        out["active_units"] = sum(out[f"active_units{i}"] for i in range(1, len(self.latent) + 1))
        return out


    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral samples z_L ~ N(0, I), z_i ~ p(z_i|z_{i+1}), then the mean of p(x|z_1)."""
        device = self.x_mu.weight.device
        z = torch.randn(n, self.latent[-1], generator=generator).to(device)
        for i in range(len(self.latent) - 2, -1, -1):
            mu, logvar, _ = self.prior[i](z)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator).to(device)
        return self.decode_mean(z)

    def decode_mean(self, z1: torch.Tensor) -> torch.Tensor:
        h = self.x_mu(self.decoder(z1))
        return torch.sigmoid(h) if self.x_var is None else h

    @torch.no_grad()
    def figures(self, data) -> dict[str, tuple]:
        """Samples from the prior and reconstructions of test images (from posterior means)."""
        self.eval()
        shape = data.info.image_shape
        samples = self.sample_prior(64, torch.Generator().manual_seed(0)).clamp(0, 1)
        x = data.eval_sets["test"][0][:16]
        x = to_unit(x).to(self.x_mu.weight.device).flatten(1)
        recon = self.decode_mean(self.infer(x, use_means=True)["z"][0]).clamp(0, 1)
        pairs = torch.stack([x, recon], 1).reshape(-1, *shape).cpu().numpy()
        return {"prior_samples": (samples.reshape(-1, *shape).cpu().numpy(), None),
                "reconstructions": (pairs, ["x", "recon"] * len(x))}


class LadderVAE(HierarchicalVAE):
    ladder = True
