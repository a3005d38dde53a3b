"""Compressed sparse columns (CSC): how the artifact stores every matmul, and the engine walks it.

A matrix W (out x in) is stored per input column j: rows ``row_idx[col_ptr[j]:col_ptr[j+1]]``
(strictly increasing) with weights ``values[...]``. The "dense" format stores every entry of a
column (zeros too: its work counts every stored weight), "sparse" the non-zeros only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["csc_from_dense", "dense_from_csc"]


def csc_from_dense(w, keep_zeros: bool = False):
    """(col_ptr, row_idx, values) of a matrix, per input column; `keep_zeros` stores every entry
    (the dense format)."""
    w = np.asarray(w, dtype=np.int64)
    col_ptr, rows, vals = [0], [], []
    for j in range(w.shape[1]):
        idx = np.arange(w.shape[0]) if keep_zeros else np.flatnonzero(w[:, j])
        rows.append(idx)
        vals.append(w[idx, j])
        col_ptr.append(col_ptr[-1] + len(idx))
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)
    return np.asarray(col_ptr, dtype=np.int64), cat(rows), cat(vals)


def dense_from_csc(col_ptr, row_idx, values, rows: int, cols: int) -> np.ndarray:
    """The dense (rows x cols) int64 matrix of a CSC triple."""
    w = np.zeros((rows, cols), dtype=np.int64)
    col_ptr = np.asarray(col_ptr, dtype=np.int64)
    counts = np.diff(col_ptr)
    cols_of = np.repeat(np.arange(cols), counts)
    np.add.at(w, (np.asarray(row_idx, dtype=np.int64), cols_of), np.asarray(values, np.int64))
    return w
