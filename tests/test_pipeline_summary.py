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
