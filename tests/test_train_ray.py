"""The engine on a real local Ray (2 CPUs): DDP gradients, full-set evaluation with 2 workers,
a worker SIGKILLed mid-epoch and resumed, and bitwise resume with one worker."""

import os
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import ray.train
import ray.train.torch
import torch
from formats import write_mnist_dir
from ray.train.torch import TorchTrainer

from dgm_dist.config import load_config
from dgm_dist.data import load_from_config
from dgm_dist.models.mlp import MLPClassifier
from dgm_dist.models.registry import DataInfo, build_model
from dgm_dist.training import state
from dgm_dist.training.embedded_ray import free_port
from dgm_dist.training.evaluation import evaluate_model
from dgm_dist.training.faults import KillWorker
from dgm_dist.training.launcher import drill_marker, storage_path, train

# slow: not in `make test-fast`; one xdist group: the module's tests share one local Ray
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_ray")]

TIMING_KEYS = ("epoch_seconds", "throughput", "first_step_at")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    # the dashboard's port chosen, not Ray's default: another Ray's dashboard there would be asked
    # whether our Train controllers live (docs/training.md, two Rays on one machine)
    ray.init(address="local", num_cpus=2, include_dashboard=False, dashboard_port=free_port(), log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("data") / "mnist", n_train=600, n_test=131)


def _cfg(root, data_dir, workers, epochs, *extra):
    return load_config(overrides=[
        "model.name=mlp", "model.hidden=32", "model.dropout=0.2", "data.dataset=mnist", f"data.data_dir={data_dir}",
        "data.validation=100", "data.binarize=dynamic", "optim.batch_size=50", "optim.lr=1e-3",
        f"optim.epochs={epochs}", f"scaling.workers={workers}", f"tracking.root={root}", *extra])


def _grads_per_worker(config):
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(MLPClassifier(20, 3, (16,)))
    x, y = config["x"], config["y"]
    part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    loss, _ = model(x=x[part], y=y[part])          # the loop's call: forward is the loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in state.unwrap(model).parameters()])
    with tempfile.TemporaryDirectory() as tmp:     # V2 keeps the metrics of checkpointed reports
        ray.train.report({"grads": grads.tolist(), "ddp": type(model).__name__},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def test_two_workers_average_gradients_like_one_on_the_global_batch(tmp_path):
    torch.manual_seed(1)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    result = TorchTrainer(_grads_per_worker, train_loop_config={"x": x, "y": y},
                          scaling_config=ray.train.ScalingConfig(num_workers=2),
                          run_config=ray.train.RunConfig(storage_path=str(tmp_path))).fit()
    torch.manual_seed(0)
    single = MLPClassifier(20, 3, (16,))
    single(x=x, y=y)[0].backward()
    expected = torch.cat([p.grad.flatten() for p in single.parameters()])
    assert result.metrics["ddp"] == "DistributedDataParallel"
    np.testing.assert_allclose(result.metrics["grads"], expected.numpy(), rtol=1e-5, atol=1e-7)


def test_killed_worker_resumes_to_the_same_result_and_one_metric_series(tmp_path, data_dir):
    extra = ("scaling.checkpoint_every=2", "scaling.max_failures=1")
    whole = train(_cfg(tmp_path, data_dir, 2, 4, *extra), run_name="whole", out=None)
    # rank 0, the only checkpoint writer, is SIGKILLed at epoch 4, step 2: the group restarts from
    # the epoch-2 checkpoint and re-runs epoch 3, whose report the driver may already have logged
    marker = drill_marker(storage_path(_cfg(tmp_path, data_dir, 2, 4)), "drill")
    drill = train(_cfg(tmp_path, data_dir, 2, 4, *extra), run_name="drill", out=None,
                  batches_hook=KillWorker(4, 2, 0, str(marker)))
    assert "killed rank 0 at epoch 4, step 2" in drill_marker(drill.storage_path, "drill").read_text()
    assert set(drill.replayed_epochs) <= {3}       # epoch 3 is re-run; logged once if it was seen
    for k, v in whole.metrics.items():
        if k not in TIMING_KEYS:
            assert drill.metrics[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    client = mlflow.MlflowClient(drill.tracking_uri)
    assert client.get_run(drill.mlflow_run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(drill.mlflow_run_id, "train_loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(drill.mlflow_run_id, "test_error")] == [2, 4]

    # the 2-worker test figures are those of the whole test set (131 examples, odd: no padding)
    saved = state.load(whole.checkpoint)
    model = build_model(_cfg(tmp_path, data_dir, 2, 4).model, DataInfo(**saved["extra"]["data_info"]))
    model.load_state_dict(saved["model"])
    x, y = load_from_config(_cfg(tmp_path, data_dir, 2, 4).data).split("test")
    sums = evaluate_model(model.eval(), torch.from_numpy(x), torch.from_numpy(y.astype("int64")), batch_size=500)
    assert sums["error"] == whole.metrics["test_error"]
    assert sums["nll"] == pytest.approx(whole.metrics["test_nll"], rel=1e-6)


def test_one_worker_resume_is_bitwise(tmp_path, data_dir):
    # the staging dirs carry the run's name: other tests' runs (other xdist workers) stage beside them
    name = f"whole-{tmp_path.name}"
    whole = train(_cfg(tmp_path, data_dir, 1, 3), run_name=name, out=None)
    assert whole.metrics["subnormals_flushed"] == 1     # every thread of the worker flushes (denormals.py)
    assert not list(Path(tempfile.gettempdir()).glob(f"dgm-checkpoint-{name}-*"))   # staging dirs removed
    train(_cfg(tmp_path, data_dir, 1, 1), run_name="parts", out=None)
    resumed = train(_cfg(tmp_path, data_dir, 1, 3), run_name="parts", out=None)
    assert [h["epoch"] for h in resumed.history] == [2, 3]                  # epoch 1 came from the checkpoint
    a, b = state.load(whole.checkpoint), state.load(resumed.checkpoint)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert {k: v for k, v in whole.metrics.items() if k not in TIMING_KEYS} == \
        {k: v for k, v in resumed.metrics.items() if k not in TIMING_KEYS}
