"""Building blocks of the training engine: schedules, exact-resume state, the MLP baseline."""

import pytest
import torch

from dgm_dist.errors import DataError
from dgm_dist.models.mlp import MLPClassifier
from dgm_dist.training import schedules, state


def test_kl_warmup_is_linear_then_one():
    total = schedules.warmup_steps(2.5, steps_per_epoch=40)
    assert total == 100
    assert [schedules.kl_weight(s, total) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    assert schedules.kl_weight(0, 0) == 1.0


def test_lr_step_decay_with_floor():
    lr = [schedules.learning_rate(3e-4, e, 0.75, 200, 3e-5) for e in (0, 199, 200, 400, 10_000)]
    assert lr[:4] == pytest.approx([3e-4, 3e-4, 2.25e-4, 1.6875e-4]) and lr[4] == 3e-5
    assert schedules.learning_rate(1e-3, 999, 0.5, 0, 0.0) == 1e-3


def _steps(model, opt, gen, data, n):
    x, y = data
    for _ in range(n):
        idx = torch.randperm(len(x), generator=gen)[:16]
        xb = torch.bernoulli(x[idx], generator=gen)                   # draws from the generator too
        loss, _ = model.loss(xb, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_from_saved_state_is_bitwise_identical(tmp_path):
    torch.manual_seed(0)
    data = (torch.rand(200, 784), torch.randint(0, 10, (200,)))

    def fresh():
        torch.manual_seed(1)
        m = MLPClassifier(784, 10, (32, 32), dropout=0.2)              # dropout uses the global RNG
        return m, torch.optim.Adam(m.parameters(), lr=1e-3), torch.Generator().manual_seed(2)

    m1, o1, g1 = fresh()
    _steps(m1, o1, g1, data, 5)
    state.save(state.capture(m1, o1, epoch=0, global_step=5, generators={"data": g1}), tmp_path)
    _steps(m1, o1, g1, data, 5)                                        # uninterrupted run

    torch.manual_seed(123)                                             # a "new process"
    m2, o2, g2 = fresh()
    next_epoch, step = state.restore(state.load(tmp_path), m2, o2, {"data": g2})
    assert (next_epoch, step) == (1, 5)
    _steps(m2, o2, g2, data, 5)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / state.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable dgm-dist checkpoint"):
        state.load(tmp_path)
    with pytest.raises(DataError, match="no checkpoint there"):
        state.load(tmp_path / "missing")


def test_mlp_shapes_and_metrics():
    m = MLPClassifier(784, 10, batch_norm=True, dropout=0.1)
    assert [p.shape[0] for n, p in m.named_parameters() if n.endswith("weight") and p.ndim == 2] == [500, 500, 10]
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, metrics = m.loss(x, y)
    assert torch.allclose(m.classify(x).exp().sum(-1), torch.ones(8))
    assert metrics["nll_sum"].item() == pytest.approx(loss.item() * 8, rel=1e-5)
    assert 0 <= metrics["error_sum"].item() <= 8
