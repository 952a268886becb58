"""The labelled test bundle: checking an exported model on the device, without torch or the dataset
(docs/export.md, *On the device*).

`dgm-dist export` writes `test_bundle.npz` beside `model.onnx`: the first BUNDLE_IMAGES test images
(uint8, the model's input shape) and their labels, and records in the card the metrics ONNX Runtime
gave on exactly those images at export. `dgm-predict MODEL --check test_bundle.npz` computes them
again on the device's provider and compares, and times batches of 1 and 64 images.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from dgm_predict.measure import batch_sizes, latency_ms, metrics

BUNDLE_NAME = "test_bundle.npz"
BUNDLE_IMAGES = 500
LATENCY_BATCHES = (1, 64)
TOLERANCE_POINTS = 0.5          # default allowed difference from the card's bundle metrics, in points


class BundleError(ValueError):
    """A bundle that is not one, or does not fit the model; one line for the user."""


def read(path: Path, shape: list[int], positions: int | None, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """pixels uint8 (N, *shape) and labels (N,) or (N, positions), sizes checked before loading:
    the archive must hold exactly pixels.npy and labels.npy, stored uncompressed (np.savez), of at
    most 65 536 images."""
    if not path.is_file():
        raise BundleError(f"{path}: no such file")
    limit = 65_536 * (math.prod(shape) + 8 * (positions or 1)) + (1 << 16)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {i.filename: i for i in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"{path}: not a test bundle written by dgm-dist export ({e})") from None
    if set(members) != {"pixels.npy", "labels.npy"}:
        raise BundleError(f"{path}: not a test bundle written by dgm-dist export (it holds {sorted(members)}; "
                          f"a bundle holds pixels.npy and labels.npy)")
    if any(i.compress_type != zipfile.ZIP_STORED or i.file_size > limit for i in members.values()):
        raise BundleError(f"{path}: a compressed or oversized bundle; write it with numpy.savez, at most 65 536 "
                          f"images")
    with np.load(path, allow_pickle=False) as data:
        pixels, labels = data["pixels"], data["labels"]
    want = (positions,) if positions else ()
    if pixels.dtype != np.uint8 or list(pixels.shape[1:]) != shape or not len(pixels):
        raise BundleError(f"{path}: pixels of shape {pixels.shape} and dtype {pixels.dtype}; the model takes uint8 "
                          f"(N, {', '.join(map(str, shape))})")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(pixels), *want) \
            or (labels.size and (labels.min() < 0 or labels.max() >= classes)):
        raise BundleError(f"{path}: labels of shape {labels.shape} and dtype {labels.dtype}; the model needs "
                          f"{(len(pixels), *want)} integers in 0..{classes - 1}")
    return pixels, labels


def check(predictor, path: Path, tolerance_points: float = TOLERANCE_POINTS, seconds: float = 1.0) -> dict:
    """The bundle's metrics on this device's provider against the card's, and latency."""
    card = predictor.card
    positions = card["outputs"][0]["shape"][1] if card["task"] == "sequence" else None
    pixels, labels = read(path, predictor.shape, positions, len(card["classes"]))
    log_probs = predictor.log_probs(pixels)
    got = metrics(log_probs, labels)
    recorded = (card.get("bundle") or {}).get("metrics")
    report = {"bundle": str(path), "examples": len(pixels), "provider": predictor.session.get_providers()[0],
              "metrics": got, "card_bundle_metrics": recorded, "card_test_metrics": card.get("test_metrics"),
              "tolerance_points": tolerance_points}
    if recorded and (card.get("bundle") or {}).get("examples") == len(pixels):
        worst = max(abs(got[k] - recorded[k]) for k in recorded) * 100
        report.update(difference_points=round(worst, 3), passed=worst <= tolerance_points)
    else:
        report.update(difference_points=None, passed=False,
                      why="the card records no metrics for a bundle of this size (export the model again)")
    report["latency"] = benchmark(predictor, pixels, seconds)
    return report


def benchmark(predictor, pixels: np.ndarray | None = None, seconds: float = 1.0) -> list[dict]:
    """Median latency and images/s at batches of 1 and 64 (bundle images, or random pixels)."""
    if pixels is None:
        pixels = np.random.default_rng(0).integers(0, 256, (max(LATENCY_BATCHES), *predictor.shape), dtype=np.uint8)
    rows = []
    for batch in batch_sizes(predictor.static, LATENCY_BATCHES):
        x = np.ascontiguousarray(np.resize(pixels, (batch, *pixels.shape[1:])))
        ms = latency_ms(predictor.log_probs, x, seconds)
        rows.append({"batch": batch, "ms": round(ms, 3), "images_per_s": round(1000 * batch / ms, 1)})
    return rows
