"""Semi-supervised deep generative models: M2 (Kingma et al. 2014), the auxiliary deep generative
model (ADGM) and the skip deep generative model (SDGM) (Maaløe et al. 2016; docs/models.md).

Inference, shared by ADGM and SDGM:  q(a|x) q(y|a,x) q(z|a,y,x)
Generative, ADGM:                    p(y) p(z) p(x|y,z) p(a|x,y,z)
Generative, SDGM:                    p(y) p(z) p(a|z,y) p(x|a,z,y)
M2:                                  q(y|x) q(z|x,y);  p(y) p(z) p(x|y,z)

Bounds (paper eqs. for L and U): with a ~ q(a|x) and z ~ q(z|a,x,y),
  L(x,y) = log p(x|.) + log p(a|.) + log p(y) - log q(a|x) - KL(q(z|a,x,y) || p(z))
  U(x)   = sum_y q(y|a,x) (L(x,y) - log q(y|a,x))
U enumerates the classes in one batched pass, and ONE draw of a serves both q(y|a,x) and every
L(x,y) ("the expectation over a is outside the sum over y"). The KL of z is analytic; the a terms
are single-sample Monte Carlo (p(a|.) depends on the sampled z). The objective, as the released
code assembles it, gives the labelled and unlabelled means equal weight:
  loss = -(s * mean L + w * mean U) + alpha * N / N_l * mean CE(q(y|a,x), y) [- log N(W; 0, 1) / N]
w = `unlabelled_weight` (1; 0 is the ablation without the unlabelled term); s = 1 with
`bound_weights="released"`, s = N_l / N with "paper": the paper's sums over the data set, in which each
labelled image counts once per pass instead of in every batch (docs/models.md). A KL warm-up weight
beta multiplies every term but log p(x|.) (beta = 1 without warm-up).

Two estimator choices (docs/models.md, "the unlabelled bound's estimator"):
- `shared_noise`: the enumerated classes of an unlabelled example share one standard-normal draw
  for z (common random numbers). Each L(x,y) stays unbiased; the differences L(x,y) - L(x,y'),
  which are what the classifier learns from, lose most of their Monte Carlo noise. False: one
  independent draw per class, as the released code.
- `mc_average` with K = `mc_samples` > 1: "bounds" averages the per-sample U and cross-entropy;
  "probabilities" averages q(y|a,x) over the K draws of a first, then takes the entropy and the
  cross-entropy of the average, as the released SDGM code. The two agree for K = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.data.pixels import to_unit
from dgm_dist.models.distributions import kl_normal_standard, log_bernoulli, log_normal, sample_normal
from dgm_dist.models.interface import InferenceOptions
from dgm_dist.models.layers import MLP, GaussianHead

VOTE_EVERY = 10        # eval_sums: the class vote of every 10th image (1 % of an evaluation's time)


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
                 factored: bool = True, weight_prior: bool = False, shared_noise: bool = True,
                 mc_average: str = "bounds", unlabelled_weight: float = 1.0, init: str = "original",
                 bound_weights: str = "released"):
        super().__init__()
        self.x_dim, self.num_classes, self.latent, self.aux = x_dim, num_classes, latent, aux
        if mc_average not in ("bounds", "probabilities"):
            raise ValueError(f"mc_average={mc_average!r}: expected 'bounds' or 'probabilities'")
        self.mc_samples, self.eval_samples, self.predict = mc_samples, eval_samples, predict
        self.shared_noise, self.mc_average, self.unlabelled_weight = shared_noise, mc_average, unlabelled_weight
        self.classification_weight = alpha * n_unlabelled / max(1, n_labelled)   # 0.1 N / N_l
        if bound_weights not in ("released", "paper"):
            raise ValueError(f"bound_weights={bound_weights!r}: expected 'released' or 'paper'")
        self.labelled_weight = max(1, n_labelled) / max(1, n_unlabelled) if bound_weights == "paper" else 1.0
        self.weight_prior_scale = 1.0 / n_unlabelled if weight_prior else 0.0
        self.register_buffer("classes", torch.eye(num_classes), persistent=False)
        self.options = {"hidden": tuple(hidden), "batch_norm": batch_norm, "factored": factored}
        self.build(output)
        if init == "torch":
            # PyTorch's default for every linear map. The original's GlorotNormal of each input's own map
            # gives the one-hot y a weight of std ~0.09 beside z's 100 inputs, so p(x|y,z) starts
            # ignoring y; PyTorch's (std 1/sqrt(3 fan_in): 0.18 for y) does not (docs/models.md)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        elif init != "original":
            raise ValueError(f"init={init!r}: expected 'original' or 'torch'")

    def mlp(self, **sizes: int) -> MLP:
        return MLP(sizes, **self.options)

    # ---- the inference side ---------------------------------------------------------------------
    def aux_posterior(self, x: torch.Tensor):
        """q(a|x): (mean, log-variance)."""
        return self.q_a_head(self.q_a(x=x))

    def class_logits(self, x: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
        return self.q_y_head(_call(self.q_y, x=x, a=a))

    def draw_aux(self, x: torch.Tensor, samples: int | None = None):
        """a ~ q(a|x) and log q(a|x): one draw per row of x, or `samples` draws per row (N, K, A),
        for which q(a|x)'s network runs once per example (its mean and variance do not depend on the
        draw)."""
        mu, logvar = self.aux_posterior(x)
        if samples is not None:
            mu, logvar = (t[:, None].expand(-1, samples, -1) for t in (mu, logvar))
        a = sample_normal(mu, logvar)
        return a, log_normal(a, mu, logvar)

    def inference(self, options: InferenceOptions) -> nn.Module:
        """The exported graph (models/interface.py): `Inference` below."""
        return Inference(self, options)

    # ---- objectives -----------------------------------------------------------------------------
    def labelled_and_unlabelled(self, x, y, x_u, beta: float):
        """Per example: the labelled bound L(x,y), the unlabelled bound U(x_u) and the cross-entropy
        of q(y|a,x), each estimated with K = `mc_samples` draws (module docstring). The K draws are
        an axis that x broadcasts over: every term of x alone (q(a|x), the x maps of the first
        layers) is computed once per example, not K times (docs/models.md, "the first-layer merge")."""
        k = self.mc_samples
        x = x.flatten(1)
        a, log_qa = self.draw_aux(x, k) if self.has_aux else (None, None)               # (N, K, A)
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)
        eps = torch.randn(len(x), k, 1, self.latent, device=x.device, dtype=x.dtype)     # z's noise
        labelled = self.bound(x[:, None, None], _class_axis(a), _class_axis(log_qa), onehot[:, None, None], beta,
                              eps).squeeze(-1)                                                 # (N, K)
        log_qy_l = F.log_softmax(self.class_logits(x[:, None], a), dim=-1).expand(-1, k, -1)  # (N, K, C)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.unlabelled_weight != 0):
            log_qy, per_class = self.enumerated(x_u, beta, k, flat=False)                     # (N, K, C)
        if self.mc_average == "probabilities" and k > 1:
            # the released code: q(y|a,x) averaged over the K draws before the log (exactly, in log space)
            log_qy, log_qy_l = (torch.logsumexp(t, 1) - math.log(k) for t in (log_qy, log_qy_l))
            per_class, labelled = per_class.mean(1), labelled.mean(1)
        else:                                        # rows n K + j: draw j of example n
            log_qy, per_class, log_qy_l = (t.flatten(0, 1) for t in (log_qy, per_class, log_qy_l))
            labelled, y = labelled.flatten(), y.repeat_interleave(k)
        unlabelled = (log_qy.exp() * (per_class - beta * log_qy)).sum(-1)
        ce = F.nll_loss(log_qy_l, y, reduction="none")
        return labelled, unlabelled, ce

    def enumerated(self, x_u: torch.Tensor, beta: float, samples: int = 1,
                   flat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """log q(y|a,x) and L(x,y) for every class y of each row of `x_u` (N, d), from `samples`
        draws of a per row and, with `shared_noise`, one draw of z's noise per draw of a for all C
        classes: both (N K, C) (`flat`) or (N, K, C)."""
        x_u = x_u.flatten(1)
        a, log_qa = self.draw_aux(x_u, samples) if self.has_aux else (None, None)
        log_qy = F.log_softmax(self.class_logits(x_u[:, None], a), dim=-1).expand(-1, samples, -1)
        # common random numbers: the same standard-normal noise of z for every enumerated class
        eps = torch.randn(len(x_u), samples, 1 if self.shared_noise else self.num_classes, self.latent,
                          device=x_u.device, dtype=x_u.dtype)
        per_class = self.bound(x_u[:, None, None], _class_axis(a), _class_axis(log_qa), self.classes[None], beta, eps)
        return (log_qy.flatten(0, 1), per_class.flatten(0, 1)) if flat else (log_qy, per_class)

    def loss(self, x: torch.Tensor, y: torch.Tensor, x_unlabelled: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labelled, unlabelled, ce = self.labelled_and_unlabelled(x, y, x_unlabelled, kl_weight)
        loss = -self.labelled_weight * labelled.mean() + self.classification_weight * ce.mean()
        if self.unlabelled_weight:     # 0: U is still computed, without gradients, for its metric
            loss = loss - self.unlabelled_weight * unlabelled.mean()
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
        # the average of q(y|a_s,x) in log space (logsumexp of log-softmaxes): a confident model's
        # probabilities underflow to 0 as softmaxes, which made log q(y|x) -inf and the NLL infinite
        log_sum = torch.full((len(x), self.num_classes), -math.inf, device=x.device, dtype=x.dtype)
        chunk = max(1, 10_000 // max(1, len(x)))
        for start in range(0, samples, chunk):
            s = min(chunk, samples - start)
            a = sample_normal(mu.expand(s, *mu.shape), logvar.expand(s, *logvar.shape))
            # x (N, d) broadcasts against a (S, N, d_a): the factored first layer computes x's term
            # once for all S draws (docs/models.md, "the first-layer merge")
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(F.log_softmax(self.class_logits(x, a), -1), 0))
        return log_sum - math.log(samples)

    @torch.no_grad()
    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Error and NLL of the classifier; and two diagnostics of what the unlabelled term teaches
        it: the entropy of q(y|x), and the error of the generative model's own class vote
        argmax_y L(x,y) (one draw, as training sees it; on every 10th image, scaled to a rate)."""
        logp = self.classify(x)
        voters = x[::VOTE_EVERY].flatten(1)
        vote = self.enumerated(voters, 1.0)[1].argmax(-1)
        return {"nll_sum": F.nll_loss(logp, y, reduction="sum").double(),
                "error_sum": (logp.argmax(-1) != y).sum(),
                "entropy_sum": torch.special.entr(logp.exp()).sum().double(),     # 0 log 0 = 0: q can underflow
                "vote_error_sum": (vote != y[::VOTE_EVERY]).sum().double() * len(x) / len(voters)}


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
        x = to_unit(x).to(device).flatten(1)
        a = self.aux_posterior(x)[0] if self.has_aux else None
        y_hat = self.classes[self.class_logits(x, a).argmax(-1)]
        z_mean = self.q_z_head(_call(self.q_z, x=x, a=a, y=y_hat))[0]
        recon = self.decode(y_hat, z_mean, a).clamp(0, 1).reshape(-1, *shape).cpu().numpy()
        pairs = [img for pair in zip(x.reshape(-1, *shape).cpu().numpy(), recon, strict=True) for img in pair]
        return {"samples_by_class": (samples, [names[i // per][:9] for i in range(c * per)]),
                "reconstructions": (pairs, ["x", "recon"] * len(recon))}


class Inference(nn.Module):
    """The exported graph of M2/ADGM/SDGM: log q(y|x). The paper predicts with q(y|a,x) averaged over
    S draws of a ~ q(a|x); a random node in ONNX would answer differently on every call, so the S
    standard-normal draws are fixed here (drawn from `options.seed`) and shared by every example of a
    batch: PyTorch run with the same draws computes the same function (docs/export.md).
    `aux="mean"` puts a at the mean of q(a|x) (one pass); M2 has no a."""

    outputs = ("log_probs",)

    def __init__(self, model: SemiSupervisedDGM, options: InferenceOptions):
        super().__init__()
        self.model = model
        self.aux = options.aux if model.has_aux else "none"
        draws = torch.randn(options.samples, 1, model.aux, generator=torch.Generator().manual_seed(options.seed)) \
            if self.aux == "sample" else torch.zeros(0)
        self.register_buffer("noise", draws)                            # (S, 1, A): shared by the batch
        self.description = {"none": "q(y|x), deterministic", "mean": "q(y|a,x) at a = mean of q(a|x)"}.get(
            self.aux, f"q(y|a,x) averaged over {options.samples} fixed draws of a ~ q(a|x) (seed {options.seed})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, x = self.model, x.flatten(1)
        if self.aux == "none":
            return F.log_softmax(m.class_logits(x, None), dim=-1)
        mu, logvar = m.aux_posterior(x)
        if self.aux == "mean":
            return F.log_softmax(m.class_logits(x, mu), dim=-1)
        a = mu + torch.exp(0.5 * logvar) * self.noise                   # (S, B, A)
        # x enters unexpanded: the factored first layer computes its term once, not S times; the
        # average of the S probabilities in log space, as `classify` (no underflow to log 0)
        return torch.logsumexp(F.log_softmax(m.class_logits(x[None], a), dim=-1), 0) - math.log(len(self.noise))


def _call(net: MLP, **inputs):
    """Call a multi-input network with the inputs it takes."""
    return net(**{k: v for k, v in inputs.items() if k in net.first.names})


def _class_axis(t: torch.Tensor | None) -> torch.Tensor | None:
    """(N, K, ...) -> (N, K, 1, ...): the axis that the enumerated classes broadcast over."""
    return None if t is None else t.unsqueeze(2)


class M2(SemiSupervisedDGM):
    has_aux = False

    def build(self, output: str) -> None:
        d, c, z = self.x_dim, self.num_classes, self.latent
        self.q_y, self.q_y_head = self.mlp(x=d), nn.Linear(self.options["hidden"][-1], c)
        self.q_z, self.q_z_head = self.mlp(x=d, y=c), GaussianHead(self.options["hidden"][-1], z)
        self.p_x, self.p_x_head = self.mlp(y=c, z=z), Likelihood(self.options["hidden"][-1], d, output)

    def bound(self, x, a, log_qa, y, beta, eps=None):
        mu, logvar = self.q_z_head(self.q_z(x=x, y=y))
        z = sample_normal(mu, logvar, eps)
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

    def bound(self, x, a, log_qa, y, beta, eps=None):
        mu, logvar = self.q_z_head(self.q_z(x=x, a=a, y=y))
        z = sample_normal(mu, logvar, eps)
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

    def bound(self, x, a, log_qa, y, beta, eps=None):
        mu, logvar = self.q_z_head(self.q_z(x=x, a=a, y=y))
        z = sample_normal(mu, logvar, eps)
        log_pa = log_normal(a, *self.p_a_head(self.p_a(y=y, z=z)))
        # a comes from q(a|x), as the SDGM bound requires (docs/models.md, "Factorisations")
        log_px = self.p_x_head.log_prob(x, self.p_x(a=a, y=y, z=z))
        return log_px + beta * (log_pa - log_qa - math.log(self.num_classes) - kl_normal_standard(mu, logvar))

    def decode(self, y, z, a=None):
        if a is None:                                   # generate: a ~ p(a|z,y)
            a = sample_normal(*self.p_a_head(self.p_a(y=y, z=z)))
        return self.p_x_head.mean(self.p_x(a=a, y=y, z=z))
