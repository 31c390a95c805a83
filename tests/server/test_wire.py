import json
import zlib

import numpy as np
import pytest

from napari_medseg.server.wire import CHUNK, WireError, pack, parse_header, unpack


@pytest.mark.parametrize("compression", ["zlib", "none"])
def test_arrays_round_trip_exactly(compression):
    arrays = {"image": np.arange(2 * CHUNK // 2 + 7, dtype=">i2").reshape(-1, 1),  # big-endian, several pieces
              "labels": np.array([[0, 3], [65535, 1]], np.uint16), "empty": np.zeros((0, 4), np.float32)}
    header, body = pack(arrays, compression=compression)
    back = unpack(parse_header(header), body)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype.newbyteorder("<") and np.array_equal(back[name], array)
        assert back[name].flags.writeable


@pytest.mark.parametrize("header, message", [
    (None, "missing"), ("not json", "not JSON"), ('{"a": 1}', "1 to 4 arrays"),
    ('[{"name": "image", "dtype": "|O", "shape": [2], "chunks": [2]}]', "dtype"),
    ('[{"name": "image", "dtype": "<i2", "shape": [-1], "chunks": [2]}]', "shape"),
    ('[{"name": "image", "dtype": "<i2", "shape": [2], "chunks": []}]', "chunks"),
])
def test_malformed_headers_are_refused(header, message):
    with pytest.raises(WireError, match=message):
        parse_header(header)


def test_sizes_must_match_and_bombs_stop_at_the_declared_size():
    header, body = pack({"image": np.zeros((4, 4), np.int16)}, compression="none")
    with pytest.raises(WireError, match="body has"):
        unpack(parse_header(header), body[:-1])
    bomb = zlib.compress(bytes(50 << 20))  # 50 MB of zeros in a few kB, declared as 32 bytes
    entry = [{"name": "image", "dtype": "<i2", "shape": [4, 4], "compression": "zlib", "chunks": [len(bomb)]}]
    with pytest.raises(WireError, match="declared 32 bytes"):
        unpack(parse_header(json.dumps(entry)), bomb)
    with pytest.raises(WireError, match="not zlib"):
        unpack(parse_header(json.dumps([{**entry[0], "chunks": [5]}])), b"hello")
