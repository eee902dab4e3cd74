"""The slices a checkpoint stores for each sliced tensor, read from its index file.

A partitioned variable is saved as slices of one tensor, and TensorFlow's
readers assemble the whole tensor from them; but stock optimizers save the
slot of each part as its own key holding only that part's slice (say
`emb/part_1/Adagrad`, the rows of part 1 of a tensor of the whole table's
shape), which no reader can read whole. Copying such a key needs its slices,
which only the checkpoint's index lists: a table (TensorFlow's on-disk
key-value table, uncompressed) of `BundleEntryProto`s keyed by tensor name.
"""

import struct

from tensorflow.core.protobuf import tensor_bundle_pb2

from estimator_ema._compat import tf

_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5


def _varint(data, position):
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _block(data, offset, size):
    """The `(key, value)` entries of the table block at `offset`."""
    block = data[offset:offset + size]
    (restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 - 4 * restarts
    position, key = 0, b""
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        length, position = _varint(block, position)
        key = key[:shared] + block[position:position + unshared]
        position += unshared
        yield key, block[position:position + length]
        position += length


def _handle(data, position):
    offset, position = _varint(data, position)
    size, position = _varint(data, position)
    return (offset, size), position


def _spec(shape, proto):
    """The `shape_and_slices` string of the slice `proto` of a tensor of `shape`."""
    extents = ["%d,%d" % (e.start, e.length) if e.HasField("length") else "-"
               for e in proto.extent]
    return " ".join(str(d) for d in shape) + " " + ":".join(extents)


def stored_slices(prefix):
    """`{key: [shape_and_slices spec of each stored slice]}` for the sliced
    tensors of checkpoint `prefix` (the others are stored whole)."""
    with tf.gfile.GFile(prefix + ".index", "rb") as handle:
        data = handle.read()
    footer = data[-_FOOTER_BYTES:]
    _, position = _handle(footer, 0)
    (index_offset, index_size), _ = _handle(footer, position)
    sliced = {}
    for _, value in _block(data, index_offset, index_size):
        (offset, size), _ = _handle(value, 0)
        for key, entry in _block(data, offset, size):
            if not key or key.startswith(b"\x00"):
                continue  # The header, and the entries of the slices themselves.
            proto = tensor_bundle_pb2.BundleEntryProto.FromString(entry)
            if proto.slices:
                shape = [d.size for d in proto.shape.dim]
                sliced[key.decode("utf-8")] = [_spec(shape, s) for s in proto.slices]
    return sliced
