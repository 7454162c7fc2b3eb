"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzipped)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from flexmtl.data.paths import DataFormatError

_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip detected from its content) into an array of the stored shape.

    Raises DataFormatError when the magic number, type code or size does not match the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFormatError(
                f"{path}: corrupt or truncated gzip data ({exc}); download the file again."
            ) from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataFormatError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}, "
            "expected 0000 followed by a type code and the number of dimensions)."
        )
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataFormatError(f"{path}: unknown IDX data type code 0x{code:02x}.")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataFormatError(f"{path}: IDX header truncated ({len(raw)} bytes).")
    shape = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = _DTYPES[code]
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataFormatError(
            f"{path}: the header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw)} bytes; it is truncated or corrupt, download it again."
        )
    data: np.ndarray = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="))
