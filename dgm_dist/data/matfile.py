"""MATLAB v5 files through scipy, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from dgm_dist.errors import DataError


def load_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        mat = scipy.io.loadmat(str(path), variable_names=list(keys))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it as v5 "
                        "(`save -v7`) or use the original download") from None
    except (ValueError, TypeError, OSError, EOFError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"{path}: not a readable MATLAB v5 file ({e}); it is truncated or "
                        "damaged: fetch it again") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{path}: missing variable(s) {missing}; expected {list(keys)}")
    return mat
