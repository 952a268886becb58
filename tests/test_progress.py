"""Live progress: on a terminal a bar inside each epoch, redrawn in place (a pseudo-terminal here);
through a pipe only the per-epoch lines, with no control characters (logs, `ray submit`)."""

import os
import subprocess
import sys

from formats import write_mnist_dir


def _train(tmp_path, data, terminal: bool) -> tuple[int, str]:
    args = [sys.executable, "-m", "dgm_dist.cli", "train", "mlp", "--dataset", "mnist", "--data-dir", str(data),
            "--workers", "0", "--epochs", "2", "--set", "data.validation=100", "--set", "model.hidden=16",
            "--set", "optim.batch_size=10", "--set", f"tracking.root={tmp_path / ('tty' if terminal else 'pipe')}"]
    env = {**os.environ, "DGM_PROGRESS_SECONDS": "0"}          # an update every step: the run is short
    if not terminal:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        return done.returncode, done.stdout + done.stderr
    master, slave = os.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                                        # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_bar_inside_each_epoch_and_a_pipe_plain_lines(tmp_path):
    data = write_mnist_dir(tmp_path / "mnist", n_train=300, n_test=60)
    code, shown = _train(tmp_path, data, terminal=True)
    assert code == 0, shown[-3000:]
    assert "\r\x1b[K  epoch 1/2 [" in shown and "/20  step " in shown and " ex/s  epoch eta " in shown, shown[-3000:]
    assert "epoch 2/2" in shown and "test_error" in shown
    code, logged = _train(tmp_path, data, terminal=False)
    assert code == 0, logged[-3000:]
    assert "\r" not in logged and "\x1b[" not in logged and "epoch 1/2" in logged and "epoch 2/2" in logged
