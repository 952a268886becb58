"""The edge predictor's PNG decoder (edge/dgm_predict/png.py) against Pillow, on images of the models' input
sizes saved by Pillow (its own choice of row filters, as real files have), in one run:

    python bench/png_decode.py

Prints milliseconds per decode and the ratio to Pillow for grey and RGB images of 28x28 (the
MNIST-sized models) and 100x100 (the cluttered-sequence models), smooth and noisy: noisy rows make
encoders pick Paeth, the one filter the decoder undoes byte by byte in Python. Then the area
resizing that brings an image of another size to the model's (edge/dgm_predict/images.py), from a
VGA photo and from the largest image it decodes (4096x4096), ms per resize."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from dgm_predict import images, png


def per_call_ms(fn, seconds: float = 0.5) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'image':<28} {'ours (ms)':>10} {'Pillow (ms)':>12} {'ours / Pillow':>14}")
    for size in (28, 100):
        ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.uint8)
        for kind, grey in (("smooth", ramp), ("noise", rng.integers(0, 256, (size, size), dtype=np.uint8))):
            for mode, image in (("grey", grey), ("RGB", np.stack([grey, grey[::-1], grey.T], -1))):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG", optimize=True)
                data = buffer.getvalue()
                assert np.array_equal(png.decode(data, size * size), np.asarray(Image.open(io.BytesIO(data))))
                ours = per_call_ms(lambda data=data, size=size: png.decode(data, size * size))
                pil = per_call_ms(lambda data=data: np.asarray(Image.open(io.BytesIO(data))))
                print(f"{f'{size}x{size} {mode}, {kind}':<28} {ours:>10.3f} {pil:>12.3f} {ours / pil:>13.1f}x")
    print(f"\n{'area resize':<28} {'ms':>10}")
    for (h, w), (th, tw), channels in (((480, 640), (28, 28), 1), ((480, 640), (100, 100), 3),
                                       ((4096, 4096), (28, 28), 1)):
        shape = (h, w) if channels == 1 else (h, w, channels)
        photo = rng.integers(0, 256, shape, dtype=np.uint8)
        ms = per_call_ms(lambda photo=photo, th=th, tw=tw: images.resize(photo, th, tw), seconds=1.0)
        print(f"{f'{w}x{h}' + (' RGB' if channels > 1 else '') + f' -> {tw}x{th}':<28} {ms:>10.2f}")


if __name__ == "__main__":
    main()
