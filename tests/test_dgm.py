"""The math of M2, ADGM and SDGM (docs/models.md): bounds, enumeration, factored layers, KL,
prediction, gradients, and which variables each factor conditions on."""

import math

import pytest
import torch
import torch.nn.functional as F

from dgm_dist.models import dgm
from dgm_dist.models.dgm import ADGM, M2, SDGM
from dgm_dist.models.distributions import kl_normal_standard, log_normal, log_standard_normal, sample_normal

SMALL = {"hidden": (16, 16), "latent": 4, "aux": 3, "n_unlabelled": 600, "n_labelled": 20}


def _data(n=6, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g).bernoulli(), torch.randint(0, 10, (n,), generator=g)


def _model(cls, **kw):
    torch.manual_seed(0)
    return cls(12, 10, **{**SMALL, **kw})


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_enumerated_unlabelled_bound_equals_the_explicit_sum_over_classes(cls, monkeypatch):
    monkeypatch.setattr(dgm, "sample_normal", lambda mu, logvar, eps=None: mu)     # deterministic draws
    model = _model(cls)
    x, y = _data()
    _, unlabelled, _ = model.labelled_and_unlabelled(x, y, x, beta=0.7)
    a, log_qa = model.draw_aux(x) if model.has_aux else (None, None)
    log_qy = F.log_softmax(model.class_logits(x, a), -1)
    explicit = torch.zeros(len(x))
    for c in range(10):
        onehot = F.one_hot(torch.full((len(x),), c), 10).float()
        lc = model.bound(x[:, None], None if a is None else a[:, None], None if a is None else log_qa[:, None],
                         onehot[:, None], 0.7).squeeze(1)
        explicit += log_qy[:, c].exp() * (lc - 0.7 * log_qy[:, c])
    torch.testing.assert_close(unlabelled, explicit, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls", [ADGM, SDGM])
def test_one_draw_of_a_serves_the_classifier_and_every_class(cls, monkeypatch):
    model = _model(cls)
    seen = {"classifier": [], "bound": []}
    real_logits, real_bound = model.class_logits, model.bound
    monkeypatch.setattr(model, "class_logits", lambda x, a: seen["classifier"].append(a) or real_logits(x, a))
    monkeypatch.setattr(model, "bound",
                        lambda x, a, lq, y, b, *e: seen["bound"].append(a) or real_bound(x, a, lq, y, b, *e))
    x, y = _data()
    model.labelled_and_unlabelled(x, y, x + 0, beta=1.0)
    a_unlabelled = seen["classifier"][-1]
    assert seen["bound"][-1].shape == (len(x), 1, 1, 3)                  # (N, K, classes, A): broadcast over
    assert torch.equal(seen["bound"][-1][:, :, 0], a_unlabelled)         # the 10 classes; the draw of q(y|a,x)


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_factored_and_concatenated_first_layers_are_the_same_function(cls):
    fast, slow = _model(cls, factored=True), _model(cls, factored=False)
    slow.load_state_dict(fast.state_dict())
    x, y = _data(seed=3)
    torch.manual_seed(7)
    a = fast(x=x, y=y, x_unlabelled=x)[0]
    torch.manual_seed(7)
    b = slow(x=x, y=y, x_unlabelled=x)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_analytic_kl_agrees_with_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5), torch.randn(5) * 0.5
    z = sample_normal(mu.expand(200_000, 5), logvar.expand(200_000, 5))
    mc = (log_normal(z, mu, logvar) - log_standard_normal(z)).mean()
    assert mc.item() == pytest.approx(kl_normal_standard(mu, logvar).item(), abs=0.02)


@torch.no_grad()
def test_labelled_elbo_lower_bounds_an_importance_sampled_log_likelihood():
    """E[L(x,y)] <= log p(x,y), estimated with 4000 importance samples from q(a,z|x,y); and E[L]
    equals the mean log-weight (the analytic KL of z is the expectation of its Monte Carlo form)."""
    model = _model(ADGM).eval()
    x, y = _data(n=3, seed=1)
    k = 4000
    xs, ys = x.repeat_interleave(k, 0), F.one_hot(y, 10).float().repeat_interleave(k, 0)
    torch.manual_seed(1)
    elbo = model.bound(xs[:, None], *(t[:, None] for t in model.draw_aux(xs)), ys[:, None], 1.0).view(3, k).mean(1)
    a, log_qa = model.draw_aux(xs)
    mu, logvar = model.q_z_head(model.q_z(x=xs, a=a, y=ys))
    z = sample_normal(mu, logvar)
    log_px = model.p_x_head.log_prob(xs, model.p_x(y=ys, z=z))
    log_pa = log_normal(a, *model.p_a_head(model.p_a(x=xs, y=ys, z=z)))
    log_w = (log_px + log_pa - math.log(10) + log_standard_normal(z) - log_qa - log_normal(z, mu, logvar)).view(3, k)
    log_p = torch.logsumexp(log_w, 1) - math.log(k)
    assert (elbo <= log_p).all()
    torch.testing.assert_close(elbo, log_w.mean(1), rtol=0, atol=0.2)


@torch.no_grad()
def test_monte_carlo_prediction_converges_to_its_mean():
    model = _model(ADGM).eval()
    x, _ = _data(n=4)
    torch.manual_seed(1)
    many = [model.classify(x, samples=4000).exp() for _ in range(2)]
    few = [model.classify(x, samples=1).exp() for _ in range(20)]
    spread_many = (many[0] - many[1]).abs().max()
    spread_few = torch.stack(few).std(0).max()
    assert spread_many < 0.02 and spread_many < spread_few / 5
    assert torch.allclose(many[0].sum(-1), torch.ones(4))
    mean_mode = _model(ADGM, predict="mean").eval()
    assert torch.equal(mean_mode.classify(x), mean_mode.classify(x))          # deterministic


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_the_unlabelled_term_alone_trains_the_classifier(cls):
    model = _model(cls)
    x, y = _data()
    _, unlabelled, _ = model.labelled_and_unlabelled(x, y, x, beta=1.0)
    (-unlabelled.mean()).backward()
    grads = [p.grad for p in list(model.q_y.parameters()) + list(model.q_y_head.parameters())]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("cls, net, inputs", [
    (ADGM, "q_a", {"x"}), (ADGM, "q_y", {"x", "a"}), (ADGM, "q_z", {"x", "a", "y"}),
    (ADGM, "p_x", {"y", "z"}), (ADGM, "p_a", {"x", "y", "z"}),           # p(x|y,z) p(a|x,y,z)
    (SDGM, "q_a", {"x"}), (SDGM, "q_y", {"x", "a"}), (SDGM, "q_z", {"x", "a", "y"}),
    (SDGM, "p_a", {"y", "z"}), (SDGM, "p_x", {"a", "y", "z"}),           # p(a|z,y) p(x|a,z,y)
    (M2, "q_y", {"x"}), (M2, "q_z", {"x", "y"}), (M2, "p_x", {"y", "z"}),
])
def test_each_factor_conditions_on_what_the_paper_says(cls, net, inputs):
    assert set(getattr(_model(cls), net).first.names) == inputs


def test_classification_weight_is_alpha_n_over_n_labelled():
    assert _model(ADGM, alpha=0.1, n_unlabelled=60000, n_labelled=100).classification_weight == pytest.approx(60)


def test_variances_are_not_forced_above_one():
    """The port's bug (softplus on the log-variance) made every variance >= 1; here a log-variance
    can be negative."""
    model = _model(ADGM)
    with torch.no_grad():
        model.q_a_head.logvar.bias.fill_(-3.0)
    _, logvar = model.aux_posterior(_data()[0])
    assert (logvar < 0).all()


# ---- the unlabelled bound's estimator (docs/models.md) ----------------------------------------------

def _class_dependent(cls):
    """A model whose classes differ by 2-3 nats and whose bound depends strongly on z: the regime of
    a trained model, where independent per-class draws of z bury the differences in noise."""
    model = _model(cls)
    with torch.no_grad():
        model.p_x.first.maps["y"].weight.mul_(10)
        model.p_x.first.maps["z"].weight.mul_(10)
    return model


def _enumerated_draws(model, shared: bool, rows: int, seed: int = 1):
    torch.manual_seed(seed)
    x, _ = _data(n=3, seed=0)                   # (its Bernoulli draw takes the global generator)
    model.shared_noise = shared
    with torch.no_grad():
        return model.enumerated(x.repeat_interleave(rows, 0), 1.0)[1].view(3, rows, 10)


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_shared_class_noise_estimates_every_class_bound_without_bias(cls):
    model, rows = _class_dependent(cls), 20_000
    shared, independent = (_enumerated_draws(model, s, rows) for s in (True, False))
    gap = (shared.mean(1) - independent.mean(1)).abs()
    se = ((shared.var(1) + independent.var(1)) / rows).sqrt()
    assert se.max() < 0.3                       # tight enough to see a bias of a fraction of a nat
    assert (gap < 5 * se).all(), (gap / se).max()


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_shared_class_noise_cuts_the_variance_of_class_differences(cls):
    model = _class_dependent(cls)
    var = {s: (lambda b: (b[..., 1:] - b[..., :1]).var(1).mean())(_enumerated_draws(model, s, 4000))
           for s in (True, False)}
    assert var[False].sqrt() > 5                # the independent draws' noise, in nats
    assert var[True] < 0.3 * var[False]         # measured 0.08-0.13


def test_shared_class_noise_is_one_draw_for_all_classes(monkeypatch):
    model = _model(SDGM)
    seen = []
    real = dgm.sample_normal
    monkeypatch.setattr(dgm, "sample_normal", lambda mu, logvar, eps=None: seen.append(eps) or real(mu, logvar, eps))
    x, _ = _data()
    model.enumerated(x, 1.0)
    eps = seen[-1]                              # z's noise in the enumerated bound
    assert eps is not None and eps.shape == (len(x), 1, 1, 4)      # (N, K, classes, z): one for all 10
    model.shared_noise = False
    model.enumerated(x, 1.0)
    assert seen[-1].shape == (len(x), 1, 10, 4)                    # each class draws its own


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_both_k_sample_estimators_agree_for_one_sample(cls):
    x, y = _data()
    out = {}
    for average in ("bounds", "probabilities"):
        model = _model(cls, mc_average=average)
        torch.manual_seed(3)
        out[average] = model.labelled_and_unlabelled(x, y, x + 0, beta=0.8)
    for a, b in zip(out["bounds"], out["probabilities"], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_k_sample_estimators_average_the_bounds_or_the_class_probabilities(cls):
    """K = 3 draws per example equal K = 1 on each example repeated 3 times (the same random
    stream); from those per-draw terms, "bounds" averages U and the cross-entropy, and
    "probabilities" averages q(y|a,x) before the entropy and the cross-entropy (released code)."""
    k, beta = 3, 0.8
    x, y = _data()
    one = _model(cls)
    if cls.has_aux:                             # a q(y|a,x) that depends on the draw of a
        with torch.no_grad():
            one.q_y.first.maps["a"].weight.mul_(10)
    enumerated, logits = [], []
    real_enumerated, real_logits = one.enumerated, one.class_logits
    one.enumerated = lambda xu, b, *k, **f: enumerated.append(real_enumerated(xu, b, *k, **f)) or enumerated[-1]
    one.class_logits = lambda xx, a: logits.append(real_logits(xx, a)) or logits[-1]
    torch.manual_seed(5)
    lab1, u1, ce1 = one.labelled_and_unlabelled(x.repeat_interleave(k, 0), y.repeat_interleave(k, 0),
                                                x.repeat_interleave(k, 0), beta)
    (log_qy, per_class), log_qy_l = enumerated[0], F.log_softmax(logits[0], -1)   # logits[0]: labelled
    for average in ("bounds", "probabilities"):
        model = _model(cls, mc_samples=k, mc_average=average)
        model.load_state_dict(one.state_dict())
        torch.manual_seed(5)
        lab, u, ce = model.labelled_and_unlabelled(x, y, x + 0, beta)
        if average == "bounds":
            expected = (lab1, u1, ce1)
        else:
            q = log_qy.exp().view(-1, k, 10).mean(1)
            q_l = log_qy_l.exp().view(-1, k, 10).mean(1)
            expected = (lab1.view(-1, k).mean(1),
                        (q * (per_class.view(-1, k, 10).mean(1) - beta * q.log())).sum(-1),
                        -q_l.log().gather(1, y[:, None]).squeeze(1))
        for got, want in zip((lab, u, ce), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # they differ where q(y|a,x) depends on a; M2's q(y|x) has no a, and there they are the same
    assert torch.allclose(u1.view(-1, k).mean(1), expected[1], atol=1e-3) == (not cls.has_aux)


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_k_draws_compute_every_term_of_x_alone_once_per_example(cls):
    """With K = 4 Monte Carlo samples, q(a|x) and the x maps of the first layers see the N examples,
    not N K copies of them; the bounds are those of x repeated K times, draw for draw."""
    k, x, y = 4, *_data()
    fast = _model(cls, mc_samples=k)
    rows = {}
    for name, net in fast.named_children():
        if hasattr(net, "first") and "x" in net.first.names:
            net.first.maps["x"].register_forward_hook(lambda m, i, o, n=name: rows.setdefault(n, set()).add(
                i[0].reshape(-1, i[0].shape[-1]).shape[0]))
    torch.manual_seed(8)
    got = fast.labelled_and_unlabelled(x, y, x + 0, 0.9)
    assert rows and all(r == {len(x)} for r in rows.values()), rows          # 6 rows, never 24
    one = _model(cls)
    one.load_state_dict(fast.state_dict())
    torch.manual_seed(8)
    want = one.labelled_and_unlabelled(*(t.repeat_interleave(k, 0) for t in (x, y, x)), 0.9)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


def test_an_unknown_k_sample_estimator_is_refused():
    with pytest.raises(ValueError, match="mc_average"):
        _model(ADGM, mc_average="mean")


# ---- the unlabelled term's weight (the ablation) ----------------------------------------------------

@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_unlabelled_weight_scales_the_unlabelled_term_of_the_loss(weight):
    x, y = _data()
    model = _model(SDGM, unlabelled_weight=weight)
    torch.manual_seed(2)
    lab, u, ce = model.labelled_and_unlabelled(x, y, x + 0, 1.0)
    torch.manual_seed(2)
    loss, sums = model(x=x, y=y, x_unlabelled=x + 0)
    want = -lab.mean() - weight * u.mean() + model.classification_weight * ce.mean()
    torch.testing.assert_close(loss, want)
    assert torch.isfinite(sums["unlabelled_elbo_sum"])           # still reported when switched off


@pytest.mark.parametrize("weights, share", [("released", 1.0), ("paper", 20 / 600)])
def test_bound_weights_scale_the_labelled_bound_by_the_labelled_share(weights, share):
    x, y = _data()
    model = _model(SDGM, bound_weights=weights)               # N_l = 20, N = 600
    torch.manual_seed(2)
    lab, u, ce = model.labelled_and_unlabelled(x, y, x + 0, 1.0)
    torch.manual_seed(2)
    loss, _ = model(x=x, y=y, x_unlabelled=x + 0)
    torch.testing.assert_close(loss, -share * lab.mean() - u.mean() + model.classification_weight * ce.mean())


def test_without_the_unlabelled_term_no_gradient_comes_from_unlabelled_images():
    x, y = _data()
    grads = []
    for x_u in (x + 0, torch.ones_like(x)):                      # two different unlabelled batches
        model = _model(SDGM, unlabelled_weight=0.0)
        torch.manual_seed(2)
        model(x=x, y=y, x_unlabelled=x_u)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# ---- prediction at the factored cost ------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ADGM, SDGM])
def test_prediction_computes_the_x_term_once_for_all_draws_of_a(cls):
    fast, slow = _model(cls, eval_samples=7).eval(), _model(cls, eval_samples=7, factored=False).eval()
    slow.load_state_dict(fast.state_dict())
    shapes = []
    fast.q_y.first.maps["x"].register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    x, _ = _data(n=5)
    torch.manual_seed(4)
    got = fast.classify(x)
    torch.manual_seed(4)
    want = slow.classify(x)                     # x expanded to every draw, concatenated with a
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert shapes == [(5, 12)]                  # one x term, not (7, 5, 12)


@pytest.mark.parametrize("cls", [M2, ADGM, SDGM])
def test_evaluation_reports_the_class_vote_and_the_entropy_of_the_classifier(cls):
    model = _model(cls, eval_samples=3).eval()
    x, y = _data(n=40, seed=2)
    torch.manual_seed(6)
    sums = model.eval_sums(x, y)
    torch.manual_seed(6)
    logp = model.classify(x)
    votes = model.enumerated(x[::10], 1.0)[1].argmax(-1)                 # the same draws, in the same order
    assert sums["vote_error_sum"].item() == pytest.approx((votes != y[::10]).sum().item() * 10)
    assert sums["entropy_sum"].item() == pytest.approx(-(logp.exp() * logp).sum().item(), rel=1e-5)
    assert 0 < sums["entropy_sum"].item() <= 40 * math.log(10) + 1e-3
    with torch.no_grad():                                                 # a confident classifier: some q(y|x)
        model.q_y_head.weight.mul_(1e4)                                   # underflow to 0, log q = -inf
    sums = model.eval_sums(x, y)
    assert torch.isfinite(sums["entropy_sum"]) and torch.isfinite(sums["vote_error_sum"])


def test_the_initialisation_is_the_original_codes_or_pytorchs():
    original, default = _model(SDGM, hidden=(500, 500)), _model(SDGM, hidden=(500, 500), init="torch")
    y_map = {"original": original.p_x.first.maps["y"].weight, "torch": default.p_x.first.maps["y"].weight}
    glorot_relu = math.sqrt(2) * math.sqrt(2 / (10 + 500))              # GlorotNormal, ReLU gain: 0.089
    assert y_map["original"].std().item() == pytest.approx(glorot_relu, rel=0.1)
    assert y_map["torch"].std().item() == pytest.approx(1 / math.sqrt(3 * 10), rel=0.1)   # U(+-1/sqrt(10))
    assert original.q_a_head.mu.weight.std().item() == pytest.approx(1e-3, rel=0.1)        # N(0, 1e-3) heads
    assert default.q_a_head.mu.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 500), rel=0.1)
    with pytest.raises(ValueError, match="init"):
        _model(SDGM, init="xavier")


def test_a_confident_classifier_keeps_finite_log_probabilities():
    """q(y|x) averaged over draws of a in log space: with logits 1 000 apart the softmax of the other
    classes underflows to 0, which made log q(y|x) -inf and the test NLL infinite (a 60-minute SDGM
    reported valid_nll = inf)."""
    import math

    torch.manual_seed(0)
    model = ADGM(784, 10, hidden=(16,), latent=4, aux=4, eval_samples=7).eval()
    with torch.no_grad():
        model.q_y_head.weight.mul_(1e4)
    x = torch.rand(5, 784)
    logp = model.classify(x)
    assert torch.isfinite(logp).all() and (logp.min() < -100)
    torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(5), atol=1e-5, rtol=0)
    nll = model.eval_sums(x, torch.zeros(5, dtype=torch.long))["nll_sum"]
    assert math.isfinite(nll.item())
