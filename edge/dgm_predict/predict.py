"""Edge predictor: classify images with an exported dgm-dist model. Needs only numpy and onnxruntime.

    dgm-predict MODEL.onnx INPUT... [--top K] [--json] [--no-resize] [--provider cuda]
    (or python -m dgm_predict)

- Inputs (images.py): image files, `.npy` arrays, directories of them, glob patterns. PNG (any
  colour type and bit depth, non-interlaced) is decoded by png.py with zlib, or by Pillow when it is
  installed, which also reads JPEG and the other common formats; the declared size is checked before
  anything is decoded. An image of another size is resized to the model's by area averaging (the
  card's `resize`), or refused with --no-resize; colour becomes grey (ITU-R 601 luma) for grey models.
- A `.npy` holds one image (H, W[, C]) or a batch (N, H, W[, C]) of the model's size: uint8 pixels
  0..255, or floats in [0, 1] (scaled to 0..255 and rounded, as the images were stored in training).
The model's card (in its ONNX metadata) names the input, the classes and the outputs; sequence
models print one class per position, and the SPN models also the glimpse boxes (theta).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from dgm_predict import bundle, images
from dgm_predict.card import from_metadata
from dgm_predict.measure import in_batches
from dgm_predict.probe import crash


class PredictError(Exception):
    """A bad model or input; printed as one line, exit status 2."""


# ---- input ----------------------------------------------------------------------------------------
MAX_BATCH = 65_536          # images in one .npy: its declared size is checked against this before loading


def read_array(path: Path, shape: list[int]) -> np.ndarray:
    """A .npy file, its header's shape checked before its data is read: at most MAX_BATCH images
    of the model's size (with up to 4 colour channels), and as many bytes as the header implies."""
    limit = MAX_BATCH * math.prod(shape) * 4
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            declared, _, dtype = reader(f, max_header_size=10_000)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise PredictError(f"{path}: not a readable .npy array ({e})") from None
    if math.prod(declared) > limit:
        raise PredictError(f"{path}: declares an array of shape {declared}, more than {MAX_BATCH} images of "
                           f"{'x'.join(map(str, shape))}; split it into smaller files")
    if dtype.hasobject or path.stat().st_size - offset < math.prod(declared) * dtype.itemsize:
        raise PredictError(f"{path}: not a readable .npy array (its data is shorter than its header declares, "
                           f"or holds Python objects)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise PredictError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(array, np.ndarray):
        raise PredictError(f"{path}: holds several arrays; save one with numpy.save")
    return array


def to_pixels(array: np.ndarray, shape: list[int], source: str) -> np.ndarray:
    """An image or batch -> uint8 (N, *shape); one clear error for anything else."""
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise PredictError(f"{source}: holds NaN or infinite values; pixels must be finite")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise PredictError(f"{source}: float pixels must lie in [0, 1] (found {array.min():g}..{array.max():g});"
                               f" give uint8 0..255 or scale to [0, 1]")
        pixels = np.rint(array * 255).astype(np.uint8)
    else:
        raise PredictError(f"{source}: pixels of dtype {array.dtype}; give uint8 (0..255) or float (0..1)")
    if pixels.ndim == len(shape) + 1 and len(shape) == 2 and pixels.shape[-1] in (3, 4) \
            and list(pixels.shape[:2]) == shape:
        pixels = _grey(pixels)                               # one colour image for a grey model
    if list(pixels.shape) == shape:
        pixels = pixels[None]
    if pixels.ndim != len(shape) + 1 or list(pixels.shape[1:]) != shape or len(pixels) == 0:
        want = "x".join(map(str, shape))
        raise PredictError(f"{source}: shape {tuple(pixels.shape)}; the model takes one image of {want} or a "
                           f"batch (N, {', '.join(map(str, shape))})")
    return np.ascontiguousarray(pixels)


def _grey(rgb: np.ndarray) -> np.ndarray:
    luma = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.rint(luma).clip(0, 255).astype(np.uint8)


def load_input(path: Path, shape: list[int], resize: bool = True, decoder: str = "auto",
               method: dict | None = None) -> np.ndarray:
    """One input file -> uint8 (N, *shape). An image of another size is resized to the model's by
    the card's method (images.RESIZE) unless resize is False; a .npy array must have the model's size."""
    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        return to_pixels(read_array(path, shape), shape, str(path))
    height, width = shape[:2]
    declared = images.size(path, decoder)
    if not resize and declared is not None and declared != (width, height):
        raise PredictError(f"{path}: an image of {declared[0]}x{declared[1]} pixels; the model takes "
                           f"{width}x{height} (drop --no-resize to resize it, by {_method(method)})")
    try:
        image = images.decode(path, images.source_limit(shape, resize), decoder)
    except images.InputError as e:
        raise PredictError(str(e)) from None
    if image.shape[:2] != (height, width):
        if (method or images.RESIZE).get("method") != "area":
            raise PredictError(f"{path}: the model card asks for resizing by {_method(method)}, which this "
                               f"dgm-predict does not know; resize the image to {width}x{height} yourself")
        image = images.resize(image, height, width)
    if len(shape) == 3 and shape[2] == 3:                 # a colour model: alpha dropped, grey repeated
        image = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    return to_pixels(image, shape, str(path))


def _method(method: dict | None) -> str:
    m = method or images.RESIZE
    return f"{m.get('method')} averaging ({m.get('fit')})" if m.get("method") == "area" else str(m.get("method"))


# ---- model ----------------------------------------------------------------------------------------
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider", "coreml": "CoreMLExecutionProvider",
                  "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider"}


def _providers(provider: str | None, available: list[str]) -> list[str]:
    """ONNX Runtime providers to try in order: every available one on this device by default; with --provider
    that one (short names as in PROVIDER_NAMES, or ORT's own), then the CPU for nodes it lacks."""
    if provider is None:                  # the Azure provider runs models remotely, not on this device
        return [p for p in available if p != "AzureExecutionProvider"]
    name = PROVIDER_NAMES.get(provider.lower(), provider)
    if name not in available:
        short = {v: k for k, v in PROVIDER_NAMES.items()}
        raise PredictError(f"--provider {provider}: not in this onnxruntime build (available: "
                           f"{', '.join(short.get(a, a) for a in available)})")
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


class Predictor:
    """An exported model and its card."""

    def __init__(self, model_path: Path, threads: int | None = None, provider: str | None = None):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise PredictError("onnxruntime is not installed: pip install 'dgm-predict[cpu]' "
                               "('dgm-predict[gpu]' on a CUDA device)") from None
        providers = _providers(provider, ort.get_available_providers())

        if not model_path.is_file():
            raise PredictError(f"{model_path}: no such model file")
        # an FP16 graph (export --half) is loaded in a child process first: it once crashed ORT (probe.py)
        if model_path.name.endswith(".fp16.onnx") and (why := crash(model_path, providers)):
            raise PredictError(f"{why}; use model.onnx (float32) or model.int8.onnx on this device")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=providers)
        except Exception as e:  # ORT's InvalidProtobuf, NoSuchFile, Fail ...
            reason = str(e).splitlines()[0].split(" : ")[-1][:200]
            raise PredictError(f"{model_path}: not an ONNX model ONNX Runtime can load ({reason})") from None
        card = from_metadata(self.session.get_modelmeta().custom_metadata_map)
        if card is None:
            raise PredictError(f"{model_path}: not a dgm-dist classifier (no model card in its metadata); "
                               f"export one with `dgm-dist export`")
        self.card = card
        self.shape = [int(d) for d in card["input"]["shape"][1:]]
        self.static = card.get("static_batch")      # a graph with a fixed batch axis: fed exactly that many
        self._check_graph_against_card(model_path)

    def _check_graph_against_card(self, model_path: Path) -> None:
        """The graph takes what its card says and returns `log_probs` (a card copied onto another
        graph, or a graph edited after export, would otherwise fail later inside ONNX Runtime)."""
        inputs, outputs = self.session.get_inputs(), {o.name for o in self.session.get_outputs()}
        want = self.card["input"]
        graph = [(i.name, [d if isinstance(d, int) else None for d in i.shape]) for i in inputs]
        fits = len(graph) == 1 and graph[0][0] == want.get("name") and len(graph[0][1]) == len(self.shape) + 1 \
            and all(g in (None, w) for g, w in zip(graph[0][1][1:], self.shape, strict=False))
        if not fits or "log_probs" not in outputs:
            raise PredictError(f"{model_path}: its graph does not match its model card (the card: input "
                               f"{want.get('name')!r} of shape [N, {', '.join(map(str, self.shape))}] and output "
                               f"'log_probs'; the graph: inputs {graph}, outputs {sorted(outputs)}); export it again")

    def outputs(self, pixels: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        """The graph's outputs for any number of images (chunked, and padded for a static batch)."""
        return in_batches(lambda x: self.session.run(names, {self.card["input"]["name"]: x}), pixels, self.static)

    def log_probs(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs(pixels, ["log_probs"])[0]

    def predict(self, pixels: np.ndarray, top: int = 3) -> list[dict]:
        outputs = dict(zip([o.name for o in self.session.get_outputs()], self.outputs(pixels), strict=True))
        probs = np.exp(outputs["log_probs"])
        classes = self.card["classes"]
        results = []
        for i, p in enumerate(probs):
            positions = p[None] if p.ndim == 1 else p
            ranked = [[{"class": classes[k], "probability": round(float(row[k]), 6)}
                       for k in np.argsort(-row)[:top]] for row in positions]
            item = {"prediction": [r[0]["class"] for r in ranked], "top": ranked}
            if self.card["task"] == "single":
                item = {"prediction": item["prediction"][0], "top": ranked[0]}
            if "theta" in outputs:
                item["theta"] = outputs["theta"][i].round(5).tolist()
            results.append(item)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dgm-predict",
                                     description="Classify images with a dgm-dist ONNX model (numpy + onnxruntime).")
    parser.add_argument("model", help="an .onnx file written by dgm-dist export")
    parser.add_argument("inputs", nargs="*", help="images (PNG; JPEG and others with Pillow), .npy arrays (one image "
                                                  "or a batch), directories of them, or glob patterns")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image or position (default 3)")
    parser.add_argument("--no-resize", action="store_true",
                        help="refuse images of another size instead of resizing them to the model's")
    parser.add_argument("--decoder", choices=["auto", "builtin", "pillow"], default="auto",
                        help="image decoder: Pillow when installed (auto), or the built-in PNG decoder")
    parser.add_argument("--provider", help="ONNX Runtime provider: cpu, cuda, tensorrt, ... (default: every "
                                           "available one, in ONNX Runtime's order)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads")
    parser.add_argument("--check", metavar="BUNDLE", type=Path,
                        help="check accuracy on the labelled test bundle dgm-dist export wrote beside the model "
                             f"({bundle.BUNDLE_NAME}) against the card, and time batches of 1 and 64")
    parser.add_argument("--tolerance", type=float, default=bundle.TOLERANCE_POINTS,
                        help="--check: allowed difference from the card's metrics, in points (default %(default)s)")
    parser.add_argument("--benchmark", action="store_true", help="time batches of 1 and 64 images")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="--check, --benchmark: time each batch size for about this long (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not args.inputs and not args.check and not args.benchmark:
        parser.error("give images or arrays to classify, --check BUNDLE or --benchmark")
    try:
        predictor = Predictor(Path(args.model), args.threads, args.provider)
        if args.check or args.benchmark:
            return _measure(predictor, args)
        method = predictor.card.get("resize")
        results = []
        for path in images.expand(args.inputs):
            pixels = load_input(path, predictor.shape, not args.no_resize, args.decoder, method)
            for j, r in enumerate(predictor.predict(pixels, max(1, args.top))):
                results.append({"input": str(path) if len(pixels) == 1 else f"{path}[{j}]", **r})
    except (PredictError, images.InputError, bundle.BundleError) as e:
        print(f"dgm-predict: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": predictor.card["model"], "dataset": predictor.card["dataset"],
                          "results": results}, indent=2))
        return 0
    for r in results:
        tops = r["top"] if predictor.card["task"] == "sequence" else [r["top"]]
        shown = "  |  ".join(", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in pos) for pos in tops)
        label = " ".join(r["prediction"]) if isinstance(r["prediction"], list) else r["prediction"]
        print(f"{r['input']}: {label}    ({shown})")
    return 0


def _measure(predictor: Predictor, args) -> int:
    """--check BUNDLE and --benchmark: exit 0, or 1 when the bundle's metrics differ from the card's."""
    if args.check:
        report = bundle.check(predictor, args.check, args.tolerance, args.seconds)
    else:
        report = {"provider": predictor.session.get_providers()[0],
                  "latency": bundle.benchmark(predictor, seconds=args.seconds)}
    if args.json:
        print(json.dumps({"model": predictor.card["model"], **report}, indent=2))
    else:
        if args.check:
            got = ", ".join(f"{k} {100 * v:.2f} %" for k, v in report["metrics"].items())
            card = report["card_bundle_metrics"] or {}
            print(f"{report['bundle']}: {report['examples']} images on {report['provider']}: {got}; at export "
                  + (", ".join(f"{k} {100 * v:.2f} %" for k, v in card.items()) or "not recorded")
                  + (f" -> {'PASS' if report['passed'] else 'FAIL'} (difference {report['difference_points']} "
                     f"points, allowed {args.tolerance})" if report["difference_points"] is not None
                     else f" -> FAIL ({report.get('why')})"))
        for row in report["latency"]:
            print(f"batch {row['batch']:>3}: {row['ms']:.2f} ms, {row['images_per_s']:.0f} images/s "
                  f"({report['provider']})")
    return 0 if report.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
