"""The pipeline's summary for a terminal: one line per family within 100 columns, the best trial's
test figure beside the exported model's own (ONNX Runtime), long names cut, errors on their own line."""

from dgm_dist.pipeline import format_table, format_terminal

ROWS = [
    {"family": "ssl", "study": "quick_ssl-20261201-123348", "trials": 4, "minutes": 1.9,
     "best": "model.name=sdgm, model.batch_norm=running, optim.warmup_epochs=1, optim.lr=0.0003",
     "test_metric": "test_error", "test_value": 0.2531, "error": None, "onnx": "runs/exports/x/model.onnx",
     "registered": "dgm-sdgm-fashion-mnist-with-a-long-name v12", "validated": True, "onnx_test_value": 0.2529,
     "ort_speedup_batch_1": 1.2, "ort_speedup_batch_64": 0.9},
    {"family": "lvae", "study": "quick_lvae-20261201-123348", "trials": 4, "minutes": 2.0,
     "best": "model.name=lvae", "test_metric": "test_iw_ll", "test_value": -243.917, "error": None},
    {"family": "spn", "study": "quick_spn-20261201-123348", "trials": 0, "minutes": 0.1, "best": "",
     "test_metric": None, "test_value": None, "error": "no trial finished"},
]


def test_the_terminal_summary_fits_100_columns_and_shows_the_onnx_figure():
    text = format_terminal(ROWS)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert lines[0].split() == ["family", "trials", "min", "test", "ONNX", "best", "trial", "registered"]
    ssl = lines[1]
    assert ssl.startswith("ssl") and "error 25.31 %" in ssl and "25.29 %" in ssl and "…" in ssl
    assert "iw_ll -243.92" in lines[2] and lines[3].startswith("spn") and lines[4] == "  error: no trial finished"
    assert "| family | study |" in format_table(ROWS)               # the report keeps the full Markdown table


def test_the_study_status_table_counts_trials_shows_the_best_and_fits_the_terminal(monkeypatch):
    import io
    import os
    import time
    from types import SimpleNamespace

    from dgm_dist.tuning.status import StatusTable

    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=(100, 24): os.terminal_size((100, 24)))

    def trial(tid, status, epoch, error, lr):
        return SimpleNamespace(trial_id=tid, status=status, config={"params": {"optim.lr": lr}},
                               last_result={"epoch": epoch, "valid_error": error} if epoch else {})
    trials = [trial("a_00000", "TERMINATED", 4, 0.25, 0.01), trial("a_00001", "TERMINATED", 1, 0.41, 0.1),
              trial("a_00002", "RUNNING", 2, 0.30, 0.003), trial("a_00003", "PENDING", 0, None, 0.001)]
    stream = io.StringIO()
    table = StatusTable("s", "valid_error", "min", 4, "asha", 6, stream, started=time.time() - 70)
    lines = table.render(trials, stopped={"a_00001"})
    assert lines[0] == "study s: 6 trials: 1 running, 3 pending, 1 finished, 1 stopped by asha, 0 failed"
    assert all(len(line) <= 100 for line in lines)
    # 7 epochs in 70 s; left: 2 of the running trial, 4 of the pending one, 4 each of 2 not yet created
    assert lines[1] == "0:01:10 elapsed, at most 0:02:20 left; best valid_error 25.00 % (trial a_00000: lr=0.01)"
    assert [line.split()[:2] for line in lines[3:]] == [["a_00002", "RUNNING"], ["a_00003", "PENDING"],
                                                        ["a_00000", "FINISHED"], ["a_00001", "STOPPED"]]
    table.draw(trials, {"a_00001"})
    table.draw(trials, {"a_00001"})                   # redrawn in place: the cursor goes back up first
    assert stream.getvalue().count(f"\033[{len(lines)}F") == 1
