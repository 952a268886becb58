"""Fashion-MNIST load time: first read (decode the IDX files) vs later reads (the decoded cache).

    python bench/data_load.py [--quick]

Prints both times from one run and their ratio; uses a fresh cache directory each time.
"""

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 cached reads instead of 10")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DGM_CACHE_DIR"] = cache
        from dgm_dist.data import load_dataset

        t = time.perf_counter()
        load_dataset("fashion-mnist")
        first = time.perf_counter() - t
        times = []
        for _ in range(3 if args.quick else 10):
            t = time.perf_counter()
            load_dataset("fashion-mnist")
            times.append(time.perf_counter() - t)
        cached = min(times)
    print(f"fashion-mnist 70k images: first read {first:.3f} s, cached read {cached:.3f} s (best of "
          f"{len(times)}), ratio {first / cached:.1f}x")


if __name__ == "__main__":
    main()
