"""Semi-supervised deep generative models: M2 (Kingma et al. 2014), the auxiliary deep generative
model (ADGM) and the skip deep generative model (SDGM) (Maaløe et al. 2016; papers.md 1).

Inference, shared by ADGM and SDGM:  q(a|x) q(y|a,x) q(z|a,y,x)
Generative, ADGM:                    p(y) p(z) p(x|y,z) p(a|x,y,z)
Generative, SDGM:                    p(y) p(z) p(a|z,y) p(x|a,z,y)
M2:                                  q(y|x) q(z|x,y);  p(y) p(z) p(x|y,z)

Bounds (paper eqs. for L and U): with a ~ q(a|x) and z ~ q(z|a,x,y),
  L(x,y) = log p(x|.) + log p(a|.) + log p(y) - log q(a|x) - KL(q(z|a,x,y) || p(z))
  U(x)   = sum_y q(y|a,x) (L(x,y) - log q(y|a,x))
U enumerates the classes in one batched pass, and ONE draw of a serves both q(y|a,x) and every
L(x,y) ("the expectation over a is outside the sum over y", papers.md 1.2). The KL of z is analytic;
the a terms are single-sample Monte Carlo (p(a|.) depends on the sampled z). The objective, as the
released code assembles it (papers.md 1.3), gives the labelled and unlabelled means equal weight:
  loss = -(mean L + mean U) + alpha * N / N_l * mean CE(q(y|a,x), y) [- log N(W; 0, 1) / N]
A KL warm-up weight beta multiplies every term but log p(x|.) (beta = 1 without warm-up).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.models.distributions import kl_normal_standard, log_bernoulli, log_normal, sample_normal
from dgm_dist.models.layers import MLP, GaussianHead


class Likelihood(nn.Module):
    """p(x|h): Bernoulli (binary images) or Gaussian with learned variance (SVHN, NORB)."""

    def __init__(self, in_features: int, x_dim: int, kind: str):
        super().__init__()
        self.kind = kind
        self.head = nn.Linear(in_features, x_dim) if kind == "bernoulli" else GaussianHead(in_features, x_dim)

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "bernoulli":
            return log_bernoulli(x, self.head(h))
        mu, logvar = self.head(h)
        return log_normal(x, mu, logvar)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(h)) if self.kind == "bernoulli" else self.head(h)[0]


class SemiSupervisedDGM(nn.Module):
    """Shared machinery; subclasses define the networks and `bound`."""

    has_aux = True

    def __init__(self, x_dim: int, num_classes: int, *, hidden=(500, 500), latent: int = 100, aux: int = 100,
                 output: str = "bernoulli", batch_norm: bool = False, mc_samples: int = 1, alpha: float = 0.1,
                 n_unlabelled: int = 1, n_labelled: int = 1, eval_samples: int = 100, predict: str = "sample",
                 factored: bool = True, weight_prior: bool = False):
        super().__init__()
        self.x_dim, self.num_classes, self.latent, self.aux = x_dim, num_classes, latent, aux
        self.mc_samples, self.eval_samples, self.predict = mc_samples, eval_samples, predict
        self.classification_weight = alpha * n_unlabelled / max(1, n_labelled)   # 0.1 N / N_l
        self.weight_prior_scale = 1.0 / n_unlabelled if weight_prior else 0.0
        self.register_buffer("classes", torch.eye(num_classes), persistent=False)
        self.options = {"hidden": tuple(hidden), "batch_norm": batch_norm, "factored": factored}
        self.build(output)

    def mlp(self, **sizes: int) -> MLP:
        return MLP(sizes, **self.options)

    # ---- the inference side ---------------------------------------------------------------------
    def aux_posterior(self, x: torch.Tensor):
        """q(a|x): (mean, log-variance)."""
        return self.q_a_head(self.q_a(x=x))

    def class_logits(self, x: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
        return self.q_y_head(_call(self.q_y, x=x, a=a))

    def draw_aux(self, x: torch.Tensor):
        mu, logvar = self.aux_posterior(x)
        a = sample_normal(mu, logvar)
        return a, log_normal(a, mu, logvar)

    # ---- objectives -----------------------------------------------------------------------------
    def labelled_and_unlabelled(self, x, y, x_u, beta: float):
        k = self.mc_samples
        x = x.flatten(1).repeat_interleave(k, 0)                     # K Monte Carlo samples per example
        y = y.repeat_interleave(k, 0)
        x_u = x_u.flatten(1).repeat_interleave(k, 0)
        a, log_qa = self.draw_aux(x) if self.has_aux else (None, None)
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)
        labelled = self.bound(x[:, None], _axis(a), _axis(log_qa), onehot[:, None], beta).squeeze(1)
        ce = F.cross_entropy(self.class_logits(x, a), y, reduction="none")

        a_u, log_qa_u = self.draw_aux(x_u) if self.has_aux else (None, None)
        log_qy = F.log_softmax(self.class_logits(x_u, a_u), dim=-1)                       # (N, C)
        per_class = self.bound(x_u[:, None], _axis(a_u), _axis(log_qa_u), self.classes[None], beta)  # (N, C)
        unlabelled = (log_qy.exp() * (per_class - beta * log_qy)).sum(-1)
        return labelled, unlabelled, ce

    def loss(self, x: torch.Tensor, y: torch.Tensor, x_unlabelled: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labelled, unlabelled, ce = self.labelled_and_unlabelled(x, y, x_unlabelled, kl_weight)
        loss = -(labelled.mean() + unlabelled.mean()) + self.classification_weight * ce.mean()
        if self.weight_prior_scale:
            loss = loss + self.weight_prior_scale * 0.5 * sum(
                p.pow(2).sum() for n, p in self.named_parameters() if n.endswith("weight") and p.ndim == 2)
        n = len(x_unlabelled)      # the loop averages these sums per unlabelled example
        sums = {"labelled_elbo_sum": labelled.detach().mean().double() * n,
                "unlabelled_elbo_sum": unlabelled.detach().mean().double() * n,
                "classification_sum": ce.detach().mean().double() * n}
        return loss, sums

    forward = loss   # the training loop calls model(**batch): DDP synchronises gradients through forward

    # ---- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """log q(y|x): q(y|a,x) averaged over `samples` draws of a ~ q(a|x) (the paper's test-time
        prediction, S = 100), or with a at the mean of q(a|x) when `predict="mean"`."""
        x = x.flatten(1)
        if not self.has_aux:
            return F.log_softmax(self.class_logits(x, None), dim=-1)
        mu, logvar = self.aux_posterior(x)
        if self.predict == "mean":
            return F.log_softmax(self.class_logits(x, mu), dim=-1)
        samples = samples or self.eval_samples
        probs = torch.zeros(len(x), self.num_classes, device=x.device, dtype=x.dtype)
        chunk = max(1, 10_000 // max(1, len(x)))
        for start in range(0, samples, chunk):
            s = min(chunk, samples - start)
            a = sample_normal(mu.expand(s, *mu.shape), logvar.expand(s, *logvar.shape))
            probs += F.softmax(self.class_logits(x.expand(s, *x.shape), a), dim=-1).sum(0)
        return torch.log(probs / samples)

    @torch.no_grad()
    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logp = self.classify(x)
        return {"nll_sum": F.nll_loss(logp, y, reduction="sum").double(),
                "error_sum": (logp.argmax(-1) != y).sum()}


    # ---- figures (logged to MLflow at the end of a run) ---------------------------------------------
    @torch.no_grad()
    def figures(self, data) -> dict[str, tuple]:
        """Class-conditional samples of p(x|y,z) (a row per class) and test reconstructions."""
        self.eval()
        shape, c, per = data.info.image_shape, self.num_classes, 8
        device = self.classes.device
        g = torch.Generator().manual_seed(0)
        y = self.classes.repeat_interleave(per, 0)
        z = torch.randn(c * per, self.latent, generator=g).to(device)
        samples = self.decode(y, z).clamp(0, 1).reshape(-1, *shape).cpu().numpy()
        names = data.classes or tuple(map(str, range(c)))
        x = data.eval_sets["test"][0][:16]
        x = (x.float() / 255 if x.dtype == torch.uint8 else x).to(device).flatten(1)
        a = self.aux_posterior(x)[0] if self.has_aux else None
        y_hat = self.classes[self.class_logits(x, a).argmax(-1)]
        z_mean = self.q_z_head(_call(self.q_z, x=x, a=a, y=y_hat))[0]
        recon = self.decode(y_hat, z_mean, a).clamp(0, 1).reshape(-1, *shape).cpu().numpy()
        pairs = [img for pair in zip(x.reshape(-1, *shape).cpu().numpy(), recon, strict=True) for img in pair]
        return {"samples_by_class": (samples, [names[i // per][:9] for i in range(c * per)]),
                "reconstructions": (pairs, ["x", "recon"] * len(recon))}


def _call(net: MLP, **inputs):
    """Call a multi-input network with the inputs it takes."""
    return net(**{k: v for k, v in inputs.items() if k in net.first.names})


def _axis(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t[:, None]


class M2(SemiSupervisedDGM):
    has_aux = False

    def build(self, output: str) -> None:
        d, c, z = self.x_dim, self.num_classes, self.latent
        self.q_y, self.q_y_head = self.mlp(x=d), nn.Linear(self.options["hidden"][-1], c)
        self.q_z, self.q_z_head = self.mlp(x=d, y=c), GaussianHead(self.options["hidden"][-1], z)
        self.p_x, self.p_x_head = self.mlp(y=c, z=z), Likelihood(self.options["hidden"][-1], d, output)

    def bound(self, x, a, log_qa, y, beta):
        mu, logvar = self.q_z_head(self.q_z(x=x, y=y))
        z = sample_normal(mu, logvar)
        log_px = self.p_x_head.log_prob(x, self.p_x(y=y, z=z))
        return log_px + beta * (-math.log(self.num_classes) - kl_normal_standard(mu, logvar))

    def decode(self, y, z, a=None):
        return self.p_x_head.mean(self.p_x(y=y, z=z))


class ADGM(SemiSupervisedDGM):
    def build(self, output: str) -> None:
        d, c, z, a, h = self.x_dim, self.num_classes, self.latent, self.aux, self.options["hidden"][-1]
        self.q_a, self.q_a_head = self.mlp(x=d), GaussianHead(h, a)
        self.q_y, self.q_y_head = self.mlp(x=d, a=a), nn.Linear(h, c)
        self.q_z, self.q_z_head = self.mlp(x=d, a=a, y=c), GaussianHead(h, z)
        self.p_x, self.p_x_head = self.mlp(y=c, z=z), Likelihood(h, d, output)          # p(x|y,z)
        self.p_a, self.p_a_head = self.mlp(x=d, y=c, z=z), GaussianHead(h, a)          # p(a|x,y,z)

    def bound(self, x, a, log_qa, y, beta):
        mu, logvar = self.q_z_head(self.q_z(x=x, a=a, y=y))
        z = sample_normal(mu, logvar)
        log_px = self.p_x_head.log_prob(x, self.p_x(y=y, z=z))
        log_pa = log_normal(a, *self.p_a_head(self.p_a(x=x, y=y, z=z)))
        return log_px + beta * (log_pa - log_qa - math.log(self.num_classes) - kl_normal_standard(mu, logvar))

    def decode(self, y, z, a=None):
        return self.p_x_head.mean(self.p_x(y=y, z=z))


class SDGM(SemiSupervisedDGM):
    def build(self, output: str) -> None:
        d, c, z, a, h = self.x_dim, self.num_classes, self.latent, self.aux, self.options["hidden"][-1]
        self.q_a, self.q_a_head = self.mlp(x=d), GaussianHead(h, a)
        self.q_y, self.q_y_head = self.mlp(x=d, a=a), nn.Linear(h, c)
        self.q_z, self.q_z_head = self.mlp(x=d, a=a, y=c), GaussianHead(h, z)
        self.p_a, self.p_a_head = self.mlp(y=c, z=z), GaussianHead(h, a)               # p(a|z,y)
        self.p_x, self.p_x_head = self.mlp(a=a, y=c, z=z), Likelihood(h, d, output)    # p(x|a,z,y)

    def bound(self, x, a, log_qa, y, beta):
        mu, logvar = self.q_z_head(self.q_z(x=x, a=a, y=y))
        z = sample_normal(mu, logvar)
        log_pa = log_normal(a, *self.p_a_head(self.p_a(y=y, z=z)))
        # a comes from q(a|x), as the SDGM bound requires (papers.md 1.6, larsmaaloee#3)
        log_px = self.p_x_head.log_prob(x, self.p_x(a=a, y=y, z=z))
        return log_px + beta * (log_pa - log_qa - math.log(self.num_classes) - kl_normal_standard(mu, logvar))

    def decode(self, y, z, a=None):
        if a is None:                                   # generate: a ~ p(a|z,y)
            a = sample_normal(*self.p_a_head(self.p_a(y=y, z=z)))
        return self.p_x_head.mean(self.p_x(a=a, y=y, z=z))
