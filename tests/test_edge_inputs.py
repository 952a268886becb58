"""The edge predictor's inputs are bounded by the model's input size before anything large is
read or allocated (dgm_predict/predict.py): a .npy whose header declares a huge array, and a PNG bomb,
each end in one PredictError."""

import struct
import time
import zlib

import numpy as np
import pytest

from dgm_predict import images
from dgm_predict.predict import MAX_BATCH, PredictError, load_input


def _npy_header(shape, dtype="|u1") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_a_npy_header_declaring_a_huge_array_is_refused_before_loading(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_header((10**11, 28, 28)))
    with pytest.raises(PredictError, match=r"declares an array of shape \(100000000000, 28, 28\), more than "
                                           f"{MAX_BATCH} images of 28x28"):
        load_input(path, [28, 28])


def test_a_npy_shorter_than_its_header_is_one_error(tmp_path):
    path = tmp_path / "short.npy"
    path.write_bytes(_npy_header((100, 28, 28)) + bytes(1000))
    with pytest.raises(PredictError, match="shorter than its header declares"):
        load_input(path, [28, 28])
    np.save(tmp_path / "ok.npy", np.zeros((3, 28, 28), np.uint8))
    assert load_input(tmp_path / "ok.npy", [28, 28]).shape == (3, 28, 28)      # the control


def test_a_png_bomb_is_refused_from_its_header(tmp_path):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(1 << 20))) + chunk(b"IEND", b""))
    with pytest.raises(PredictError, match=r"bomb.png: an image of 10000x10000 pixels; the model takes 28x28 "):
        load_input(path, [28, 28], resize=False)                  # --no-resize: refused from the header
    # to resize, up to 4096 x 4096 pixels are decoded: still refused from the header, by either decoder
    for decoder, says in (("builtin", "a PNG of"), ("pillow", "an image of")):
        started = time.perf_counter()
        with pytest.raises(PredictError, match=f"bomb.png: {says} 10000x10000 pixels, more than the 16777216"):
            load_input(path, [28, 28], decoder=decoder)
        assert time.perf_counter() - started < 0.1


def _graph(tmp_path, input_name, card_input_name, output="log_probs"):
    import onnx
    from onnx import TensorProto, helper

    from dgm_predict.card import FORMAT, metadata

    node = helper.make_node("Identity", [input_name], [output])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 10])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    card = {"format": FORMAT, "task": "single", "classes": [str(i) for i in range(10)],
            "input": {"name": card_input_name, "shape": ["N", 10]}}
    for k, v in metadata(card).items():
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / f"{input_name}-{card_input_name}-{output}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("graph_input, card_input, output, fits", [
    ("pixels", "pixels", "log_probs", True),            # the control
    ("x", "pixels", "log_probs", False),                # the card names another input
    ("pixels", "pixels", "logits", False),              # no log_probs output
])
def test_a_graph_that_does_not_match_its_card_is_one_error(tmp_path, graph_input, card_input, output, fits):
    from dgm_predict.predict import Predictor

    path = _graph(tmp_path, graph_input, card_input, output)
    if fits:
        assert Predictor(path).shape == [10]
    else:
        with pytest.raises(PredictError, match="its graph does not match its model card"):
            Predictor(path)


# ---- names, decoders, resizing -----------------------------------------------------------------------
def test_directories_and_patterns_expand_sorted_and_an_empty_one_is_one_error(tmp_path):
    for name in ("b.png", "a.npy", "c.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert images.expand([str(tmp_path)]) == [tmp_path / "a.npy", tmp_path / "b.png", tmp_path / "c.jpg"]
    assert images.expand([f"{tmp_path}/*.png", str(tmp_path / "a.npy")]) == [tmp_path / "b.png", tmp_path / "a.npy"]
    with pytest.raises(images.InputError, match=r"\*\.gif: no file matches this pattern"):
        images.expand([f"{tmp_path}/*.gif"])
    with pytest.raises(images.InputError, match="a directory with no .png"):
        images.expand([str(tmp_path / "sub")])


def test_area_resizing_averages_the_area_each_pixel_covers():
    blocks = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    assert np.array_equal(images.resize(np.kron(blocks, np.ones((3, 3), np.uint8)), 28, 28), blocks)
    assert np.array_equal(images.resize(blocks, 28, 28), blocks)                     # same size: unchanged
    # 3 pixels to 2: each output covers one whole input pixel and half of the middle one
    assert images.resize(np.array([[0, 90, 180]], np.uint8), 1, 2).tolist() == [[30, 150]]
    rgb = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    assert images.resize(rgb, 28, 28).shape == (28, 28, 3)
    np.testing.assert_allclose(images.area_weights(640, 28).sum(1), 1)


def test_an_image_of_another_size_is_resized_or_refused_with_no_resize(tmp_path):
    from formats import write_png

    digit = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    write_png(tmp_path / "big.png", np.kron(digit, np.ones((4, 4), np.uint8)))      # 112 x 112
    for decoder in ("builtin", "pillow"):
        assert np.array_equal(load_input(tmp_path / "big.png", [28, 28], decoder=decoder), digit[None])
    with pytest.raises(PredictError, match=r"big.png: an image of 112x112 pixels; the model takes 28x28 \(drop "
                                           r"--no-resize to resize it, by area averaging \(stretch\)\)"):
        load_input(tmp_path / "big.png", [28, 28], resize=False)
    with pytest.raises(PredictError, match="resizing by bicubic, which this dgm-predict does not know"):
        load_input(tmp_path / "big.png", [28, 28], method={"method": "bicubic"})


def test_pillow_reads_what_the_builtin_decoder_reads_and_jpeg_needs_it(tmp_path):
    from formats import write_png
    from PIL import Image

    rng = np.random.default_rng(3)
    grey, rgb = rng.integers(0, 256, (28, 28), dtype=np.uint8), rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    write_png(tmp_path / "grey.png", grey)
    write_png(tmp_path / "rgb.png", rgb)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")          # 16-bit grey
    for name in ("grey.png", "rgb.png", "palette.png", "deep.png"):
        ours = images.decode(tmp_path / name, 784, "builtin")
        assert np.array_equal(images.decode(tmp_path / name, 784, "pillow"), ours), name
    assert np.array_equal(images.decode(tmp_path / "deep.png", 784, "pillow"), grey)
    Image.fromarray(np.kron(grey, np.ones((2, 2), np.uint8))).save(tmp_path / "photo.jpg", quality=95)
    pixels = load_input(tmp_path / "photo.jpg", [28, 28], decoder="pillow")
    assert pixels.shape == (1, 28, 28) and np.abs(pixels[0].astype(int) - grey).mean() < 8    # JPEG is lossy
    with pytest.raises(PredictError, match=r"photo.jpg: not a PNG file; other image formats need Pillow: "
                                           r"pip install 'dgm-predict\[pillow\]'"):
        load_input(tmp_path / "photo.jpg", [28, 28], decoder="builtin")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(PredictError, match="junk.jpg: not an image file Pillow reads"):
        load_input(tmp_path / "junk.jpg", [28, 28], decoder="pillow")


def test_an_unknown_provider_is_one_line_naming_the_available_ones(tmp_path):
    from dgm_predict.predict import Predictor

    path = _graph(tmp_path, "pixels", "pixels")
    with pytest.raises(PredictError, match=r"--provider quantum: not in this onnxruntime build \(available: .*cpu"):
        Predictor(path, provider="quantum")
    assert Predictor(path, provider="cpu").session.get_providers() == ["CPUExecutionProvider"]


# ---- the on-device check ------------------------------------------------------------------------------
def _argmax_model(tmp_path, bundle_metrics):
    """A dgm-dist-carded graph whose class is the brightest of 10 pixels (Cast + LogSoftmax)."""
    import onnx
    from onnx import TensorProto, helper

    from dgm_predict.card import FORMAT, metadata

    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("LogSoftmax", ["x"], ["log_probs"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 10])],
                              [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["N", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    card = {"format": FORMAT, "model": "toy", "task": "single", "classes": [str(i) for i in range(10)],
            "input": {"name": "pixels", "shape": ["N", 10]}, "outputs": [{"name": "log_probs"}],
            "bundle": {"file": "test_bundle.npz", "examples": 40, "metrics": bundle_metrics}}
    for k, v in metadata(card).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, tmp_path / "model.onnx")
    return tmp_path / "model.onnx"


def test_check_compares_the_bundle_with_the_card_and_fails_when_they_differ(tmp_path, capsys):
    import json

    from dgm_predict.predict import main

    pixels = np.random.default_rng(0).permutation(np.arange(400) % 250).reshape(40, 10).astype(np.uint8)
    labels = pixels.argmax(1)
    labels[:4] = (labels[:4] + 1) % 10                                    # 4 of 40 wrong: error 10 %
    np.savez(tmp_path / "test_bundle.npz", pixels=pixels, labels=labels)
    args = [str(tmp_path / "model.onnx"), "--check", str(tmp_path / "test_bundle.npz"), "--seconds", "0.01"]
    _argmax_model(tmp_path, {"error": 0.1})
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"] == {"error": 0.1} and report["passed"] and report["difference_points"] == 0
    assert [r["batch"] for r in report["latency"]] == [1, 64]
    _argmax_model(tmp_path, {"error": 0.05})                              # the card says 5 %: 5 points off
    assert main(args) == 1
    assert "FAIL (difference 5.0 points, allowed 0.5)" in capsys.readouterr().out
    assert main([*args, "--tolerance", "6"]) == 0


@pytest.mark.parametrize("arrays, compressed, message", [
    ({"pixels": np.zeros((3, 10), np.uint8)}, False, "it holds ['pixels.npy']"),
    ({"pixels": np.zeros((3, 10), np.uint8), "labels": np.zeros(3, np.int64)}, True, "a compressed or oversized"),
    ({"pixels": np.zeros((3, 12), np.uint8), "labels": np.zeros(3, np.int64)}, False, "pixels of shape (3, 12)"),
    ({"pixels": np.zeros((3, 10), np.uint8), "labels": np.full(3, 10)}, False, "integers in 0..9"),
])
def test_a_bundle_that_does_not_fit_is_one_line(tmp_path, capsys, arrays, compressed, message):
    from dgm_predict.predict import main

    _argmax_model(tmp_path, {"error": 0.0})
    (np.savez_compressed if compressed else np.savez)(tmp_path / "b.npz", **arrays)
    assert main([str(tmp_path / "model.onnx"), "--check", str(tmp_path / "b.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgm-predict: error: ") and message in err and len(err.strip().splitlines()) == 1
