"""The edge predictor's inputs are bounded by the model's input size before anything large is
read or allocated (dgm_predict/predict.py): a .npy whose header declares a huge array, and a PNG bomb,
each end in one PredictError."""

import struct
import zlib

import numpy as np
import pytest

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
    with pytest.raises(PredictError, match="bomb.png: a PNG of 10000x10000 pixels, more than the 784"):
        load_input(path, [28, 28])


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
