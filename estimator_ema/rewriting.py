"""Writing a new checkpoint whose plain variable names hold the averages."""

import ctypes
import logging
import os
import re
import uuid

import numpy as np

from estimator_ema import _checks, _options
from estimator_ema._compat import tf
from estimator_ema._tensor_bundle import stored_slices
from estimator_ema.checkpoints import (averages_and_helpers, directory_of, normalized_path,
                                       optimizer_scopes,
                                       reports_unreadable_checkpoints, require_averages,
                                       resolve_checkpoint)

logger = logging.getLogger("estimator_ema")

_CHUNK_BYTES = 16 << 20
"""`write_averaged_checkpoint` copies tensors in chunks of at most this many bytes
(a larger tensor is a chunk by itself), so memory stays near the largest tensor."""

_PART = re.compile(r"^part_\d+$")

_OPTIMIZER_NON_SLOT = re.compile(r"(^|/)beta[12]_power(_\d+)?$")

def _check_output_prefix(output_prefix, source):
    if not isinstance(output_prefix, (str, os.PathLike)):
        raise TypeError("'output_prefix' must be a checkpoint prefix path (got %r)."
                        % (output_prefix,))
    path = os.fspath(output_prefix)
    if not os.path.basename(path) or tf.gfile.IsDirectory(path):
        raise ValueError("'output_prefix' must be a checkpoint prefix such as "
                         "'<directory>/model.ckpt', not a directory (got %r)." % (path,))
    if normalized_path(path) == normalized_path(source):
        raise ValueError("'output_prefix' must not be the source checkpoint (got %r)." % (path,))
    if (normalized_path(directory_of(path)) == normalized_path(directory_of(source))
            and tf.gfile.Exists(path + ".index")):
        raise ValueError("'output_prefix' must not overwrite another checkpoint in the source "
                         "checkpoint's directory (got %r)." % (path,))
    return path


def _optimizer_state(shapes, averages):
    """The keys of optimizer state, found from the checkpoint's structure:
    `[<scope>/]<variable>[/part_<i>]/<slot>` with the variable's shape (slots
    such as `Momentum`, `Adam`, `<variable>/part_<i>/Ftrl` of a part of a
    partitioned variable, a Keras optimizer's `Adam/<variable>/m`, and averages
    under other names), every key in the name scope of such `<scope>/...` slots
    (a Keras optimizer's `iter` and hyperparameters), and, by name, v1 Adam's
    `beta1_power` / `beta2_power`."""
    slots = set()
    for key in shapes:
        parts = key.split("/")
        owners = ["/".join(parts[i:-1]) for i in range(len(parts) - 1)]
        if len(parts) > 2 and _PART.match(parts[-2]):
            # A stock optimizer's slot of a part: `<variable>/part_<i>/<slot>`.
            owners += ["/".join(parts[i:-2]) for i in range(len(parts) - 2)]
        if key not in averages and any(shapes.get(o) == shapes[key] for o in owners):
            slots.add(key)
    scopes = optimizer_scopes(slots, shapes)
    return slots | {key for key in shapes
                    if _OPTIMIZER_NON_SLOT.search(key)
                    or any(key.startswith(scope + "/") for scope in scopes)}


def _averaged_layout(checkpoint, shapes, name, drop_optimizer_slots):
    """`[(source key, target key)]` of the averaged checkpoint, sorted by target."""
    averages = require_averages(checkpoint, shapes, name)
    dropped = averages_and_helpers(shapes, name)
    if drop_optimizer_slots:
        dropped.update(_optimizer_state(shapes, set(averages.values())))
    layout = {key: key for key in shapes if key not in dropped}
    layout.update({var: average for var, average in averages.items()})
    return sorted((source, target) for target, source in layout.items())


def _nbytes(shape, dtype, spec=""):
    """The bytes of the tensor of `shape`, or of its slice `spec`."""
    if spec:
        extents = spec.split(" ")[-1].split(":")
        shape = [size if extent == "-" else int(extent.split(",")[1])
                 for size, extent in zip(shape, extents)]
    return int(np.prod(shape, dtype=np.int64)) * max(dtype.size, 1)


def _copies(layout, sliced):
    """`[(source key, target key, slice spec)]`: each tensor of the layout whole
    (spec ""), or each of its stored slices (see `_tensor_bundle`)."""
    return [(source, target, spec) for source, target in layout
            for spec in sliced.get(source, [""])]


class _TensorCopier(object):
    """Copies checkpoint tensors into new checkpoint files, a chunk per session run.

    A `RestoreV2` op reads the chunk and a `SaveV2` op writes it under its new
    names, as the same slices, in the same run, so tensor data never passes through Python and at
    most one chunk is in memory. `MergeV2Checkpoints` joins the pieces.
    """

    def __init__(self):
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._source = tf.placeholder(tf.string, [], name="source")
            self._target = tf.placeholder(tf.string, [], name="target")
            self._names = tf.placeholder(tf.string, [None], name="names")
            self._new_names = tf.placeholder(tf.string, [None], name="new_names")
            self._slices = tf.placeholder(tf.string, [None], name="slices")
            self._pieces = tf.placeholder(tf.string, [None], name="pieces")
            self._merge = tf.raw_ops.MergeV2Checkpoints(
                checkpoint_prefixes=self._pieces, destination_prefix=self._target,
                delete_old_dirs=False)
        self._copies = {}
        self._session = tf.Session(graph=self._graph,
                                   config=tf.ConfigProto(device_count={"GPU": 0}))

    def _copy_op(self, dtypes):
        if dtypes not in self._copies:
            with self._graph.as_default():
                tensors = tf.raw_ops.RestoreV2(prefix=self._source, tensor_names=self._names,
                                               shape_and_slices=self._slices,
                                               dtypes=list(dtypes))
                self._copies[dtypes] = tf.raw_ops.SaveV2(
                    prefix=self._target, tensor_names=self._new_names,
                    shape_and_slices=self._slices, tensors=tensors)
        return self._copies[dtypes]

    def copy(self, source, copies, dtypes, target):
        """Writes checkpoint `target` holding source key `s` as `t` for `(s, t, spec)`
        in copies (`spec` the slice, or "" for the whole tensor)."""
        op = self._copy_op(tuple(dtypes[s] for s, _, _ in copies))
        self._session.run(op, {self._source: source, self._target: target,
                               self._names: [s for s, _, _ in copies],
                               self._new_names: [t for _, t, _ in copies],
                               self._slices: [spec for _, _, spec in copies]})

    def merge(self, pieces, target):
        """Merges the checkpoints `pieces` into one checkpoint `target` (moving their data)."""
        self._session.run(self._merge, {self._pieces: pieces, self._target: target})

    def close(self):
        self._session.close()


def _glibc_malloc_trim():
    """glibc's `malloc_trim`, or None where there is none (macOS, musl)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _release_freed_memory():
    """Hands the heap memory freed by the last chunk back to the OS.

    glibc serves allocations under its dynamic mmap threshold (up to 32 MiB)
    from arenas that keep freed memory; with TF 1.15 the freed tensor buffers
    of successive chunks piled up there (0.3 x the checkpoint in
    benchmarks/rewrite_memory.py). `malloc_trim` releases them; it changes no
    setting.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _chunks(copies, shapes, dtypes):
    chunk, size = [], 0
    for source, target, spec in copies:
        nbytes = _nbytes(shapes[source], dtypes[source], spec)
        if chunk and size + nbytes > _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append((source, target, spec))
        size += nbytes
    if chunk:
        yield chunk


def _checkpoint_files(prefix):
    """The data files and then the index file of checkpoint `prefix` that exist."""
    directory, base = directory_of(prefix), os.path.basename(prefix)
    if not tf.gfile.IsDirectory(directory):
        return []
    data = re.compile(re.escape(base) + r"\.data-\d{5}-of-\d{5}$")
    files = tf.gfile.ListDirectory(directory)
    found = sorted(f for f in files if data.match(f))
    if base + ".index" in files:
        found.append(base + ".index")
    return [os.path.join(directory, f) for f in found]


def _rename(source, target):
    tf.gfile.Rename(source, target, overwrite=True)


def _move_into_place(merged, output_prefix, staging):
    """Moves checkpoint `merged` to `output_prefix`, index last; a checkpoint
    already there is set aside in `staging` and put back if this fails."""
    aside = []
    for path in _checkpoint_files(output_prefix):
        kept = os.path.join(staging, "previous" + path[len(output_prefix):])
        _rename(path, kept)
        aside.append((path, kept))
    moved = []
    try:
        for path in _checkpoint_files(merged):
            target = output_prefix + path[len(merged):]
            _rename(path, target)
            moved.append(target)
    except BaseException:
        for path in moved:
            tf.gfile.Remove(path)
        for path, kept in aside:
            _rename(kept, path)
        raise


def _stream_to(source, copies, shapes, dtypes, output_prefix):
    """Writes the averaged checkpoint under a temporary name in the output
    directory and renames it at the end; on failure nothing is left."""
    output_dir = directory_of(output_prefix)
    created = not tf.gfile.IsDirectory(output_dir)
    staging = os.path.join(output_dir, ".%s.tmp-%s" % (os.path.basename(output_prefix),
                                                        uuid.uuid4().hex[:12]))
    tf.gfile.MakeDirs(staging)
    copier = None
    done = False
    try:
        copier = _TensorCopier()
        pieces = []
        for i, chunk in enumerate(_chunks(copies, shapes, dtypes)):
            pieces.append(os.path.join(staging, "piece-%05d" % i))
            copier.copy(source, chunk, dtypes, pieces[-1])
            _release_freed_memory()
        merged = os.path.join(staging, "merged")
        copier.merge(pieces, merged)
        _move_into_place(merged, output_prefix, staging)
        done = True
    finally:
        if copier is not None:
            copier.close()
        tf.gfile.DeleteRecursively(staging)
        if created and not done and not tf.gfile.ListDirectory(output_dir):
            tf.gfile.DeleteRecursively(output_dir)


def _record_checkpoint(output_dir, output_prefix):
    """Makes `output_prefix` the latest checkpoint of `output_dir`'s state file,
    keeping the checkpoints it listed; the file is replaced in one rename."""
    state = tf.train.get_checkpoint_state(output_dir)
    listed = [p for p in (state.all_model_checkpoint_paths if state else [])
              if normalized_path(p) != normalized_path(output_prefix)]
    proto = tf.train.generate_checkpoint_state_proto(
        output_dir, output_prefix, all_model_checkpoint_paths=listed + [output_prefix])
    path = os.path.join(output_dir, "checkpoint")
    temporary = "%s.tmp-%s" % (path, uuid.uuid4().hex[:12])
    with tf.gfile.GFile(temporary, "w") as handle:
        handle.write(str(proto))
    _rename(temporary, path)


@reports_unreadable_checkpoints
def write_averaged_checkpoint(checkpoint_or_model_dir, output_prefix, *,
                              name=_options.EMA_NAME, drop_optimizer_slots=False):
    """Writes a checkpoint whose plain variable names hold the averages.

    For each average `<v>/<name>` in the source, the new checkpoint holds its
    value under `<v>`; the averages and their helpers (`<v>/<name>/biased`,
    `<v>/<name>/local_step`, and `<v>/<name>/lazy_scale` in checkpoints of
    development versions before 0.1.0) are dropped; everything else (global
    step, optimizer slots, variables without an average) is copied, sliced
    tensors (partitioned variables, their optimizers' slots) as the same
    slices.
    Any `Saver` of the plain model, `Estimator.evaluate(checkpoint_path=...)`,
    or `warm_start_from` then reads the averages without knowing about them.
    No `.meta` file is written: the source's graph still has the averages.

    The copy streams: chunks of at most 16 MiB (or one larger tensor) go from
    the source to the new files inside TensorFlow, so memory stays near the
    largest tensor rather than the checkpoint's size. The files are written
    under a temporary name in the output directory and renamed at the end
    (index last); a failure leaves no output behind, and a checkpoint already
    at `output_prefix` is replaced only once the new one is complete.

    When the output directory is not the source's directory, its `checkpoint`
    state file is updated to name the new checkpoint as the latest (keeping
    what it listed), so the directory works as a `model_dir`. In the source's
    directory the state file is left alone: training there keeps resuming from
    its own checkpoints.

    Example:

        estimator_ema.write_averaged_checkpoint("/models/run1", "/models/run1-ema/model.ckpt")
        plain = tf.estimator.Estimator(model_fn, model_dir="/models/run1-ema")
        plain.evaluate(eval_input_fn)     # the averaged weights

    Args:
      checkpoint_or_model_dir: str, a checkpoint prefix or a model_dir.
      output_prefix: str, the new checkpoint's prefix, e.g. `<dir>/model.ckpt-1000`.
        Its directory is created if needed.
      name: str, the averages' suffix.
      drop_optimizer_slots: bool; if True also drop optimizer state: every
        `<variable>/<slot>` with the variable's shape (`Momentum`, `Adam`,
        `Adam_1`, `RMSProp`, ... and averages under other names), every
        Keras optimizer slot `<scope>/<variable>/<slot>` with the rest of
        that scope (`Adam/iter`, `Adam/learning_rate`, ...), and v1 Adam's
        `beta1_power` / `beta2_power`.

    Returns:
      `output_prefix`, as a str.

    Raises:
      TypeError: arguments of the wrong type.
      ValueError: no checkpoint there, no averages named `name`, an
        `output_prefix` that is a directory, the source checkpoint, or another
        checkpoint in the source's directory.
    """
    name = _checks.check_name(name)
    drop_optimizer_slots = _checks.check_bool("drop_optimizer_slots", drop_optimizer_slots)
    source = resolve_checkpoint(checkpoint_or_model_dir)
    output_prefix = _check_output_prefix(output_prefix, source)
    reader = tf.train.NewCheckpointReader(source)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    layout = _averaged_layout(source, shapes, name, drop_optimizer_slots)
    _stream_to(source, _copies(layout, stored_slices(source)), shapes, dtypes, output_prefix)
    output_dir = directory_of(output_prefix)
    if normalized_path(output_dir) != normalized_path(directory_of(source)):
        _record_checkpoint(output_dir, output_prefix)
    logger.info("write_averaged_checkpoint: wrote %d tensors (%d averages) from %s to %s.",
                len(layout), sum(1 for s, t in layout if s != t), source, output_prefix)
    return output_prefix

