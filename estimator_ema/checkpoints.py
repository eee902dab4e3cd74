"""Finding checkpoints and the averages in them.

A checkpoint holds the average of variable `v` under `<v>/<name>` (and, with
zero debiasing, the helpers `<v>/<name>/biased` and `<v>/<name>/local_step`),
whether this package or stock `tf.compat.v1.train.ExponentialMovingAverage`
wrote it. Reading, restoring, rewriting and warm-starting from the averages
are in `reading`, `restoring`, `rewriting` and `warm_start`; nothing in any of
them ever writes into the source checkpoint.
"""

import functools
import os
import re

import numpy as np

from estimator_ema import _checks, _options
from estimator_ema._compat import tf

_TRAINING_OP = re.compile(r"^(Resource)?(Sparse)?Apply[A-Z]")
"""The op types of optimizers' updates; input 0 is the variable updated."""

_READS = ("Identity", "ReadVariableOp", "Cast")
"""Op types through which a training op's input is a variable's value."""

def resolve_checkpoint(checkpoint_or_model_dir, argument="checkpoint_or_model_dir"):
    """The checkpoint prefix for a prefix or a model_dir (its latest checkpoint).

    Raises:
      TypeError: the path is not a string.
      ValueError: no checkpoint is there.
    """
    if not isinstance(checkpoint_or_model_dir, (str, os.PathLike)):
        raise TypeError("'%s' must be a checkpoint prefix or a model_dir path (got %r)."
                        % (argument, checkpoint_or_model_dir))
    path = os.fspath(checkpoint_or_model_dir)
    if tf.gfile.IsDirectory(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise ValueError("'%s' is a directory with no checkpoint (got %r)."
                             % (argument, path))
        return latest
    if tf.gfile.Exists(path + ".index") or tf.gfile.Exists(path):
        return path
    raise ValueError("'%s' is neither a checkpoint nor a model_dir (got %r)."
                     % (argument, path))



def reports_unreadable_checkpoints(function):
    """Turns TensorFlow's failures to read a checkpoint's files into one ValueError.

    A truncated or corrupt checkpoint otherwise surfaces as an OutOfRangeError,
    a DataLossError or a bare IndexError from deep inside TensorFlow; the
    original stays attached as the cause.
    """

    @functools.wraps(function)
    def wrapper(checkpoint_or_model_dir, *args, **kwargs):
        try:
            return function(checkpoint_or_model_dir, *args, **kwargs)
        except (tf.errors.OpError, IndexError) as error:
            reason = (getattr(error, "message", None) or str(error)).strip().splitlines()
            raise ValueError("Checkpoint %r could not be read (truncated or corrupt?): %s"
                             % (os.fspath(checkpoint_or_model_dir), reason[0] if reason else
                                type(error).__name__)) from error

    return wrapper



def checkpoint_averages(keys, name=_options.EMA_NAME):
    """`{variable name: checkpoint key of its average}` for the averages among `keys`."""
    suffix = _options.shadow_name("", name)
    return {key[:-len(suffix)]: key for key in keys
            if key.endswith(suffix) and len(key) > len(suffix)}


def averages_and_helpers(keys, name=_options.EMA_NAME):
    """The keys among `keys` that hold averages named `name` or their helpers:
    `<v>/<name>`, `<v>/<name>/biased`, `<v>/<name>/local_step` (a partitioned
    variable's scalar `local_step` is one per part,
    `<v>/part_<i>/<name>/local_step`), and a lazy average's `<v>/<name>/lazy_scale`
    in checkpoints of development versions before 0.1.0."""
    averages = set(checkpoint_averages(keys, name).values())
    suffix = _options.shadow_name("", name)
    return averages | {key for key in keys
                       if key.rpartition("/")[2] in _options.HELPERS
                       and key.rpartition("/")[0].endswith(suffix)}


def require_averages(checkpoint, keys, name):
    """`checkpoint_averages(keys, name)`; raises ValueError if there is none."""
    averages = checkpoint_averages(keys, name)
    if not averages:
        raise ValueError("Checkpoint %r has no averages named %r." % (checkpoint, name))
    return averages


def checkpoint_key(var):
    """The checkpoint key `var` is saved under: its op name, or for a part of a
    partitioned variable the variable's full name (the part is a slice of it)."""
    info = var._get_save_slice_info()
    return var.op.name if info is None else info.full_name


def saver_var_list(pairs):
    """The `tf.compat.v1.train.Saver` var_list that loads each variable from its key
    in `[(checkpoint key, variable)]`: `{key: variable}`, or `{key: [parts]}` for
    the parts of a partitioned variable, which the Saver reads as slices of `key`."""
    var_list = {}
    for key, var in pairs:
        if var._get_save_slice_info() is None:
            var_list[key] = var
        else:
            var_list.setdefault(key, []).append(var)
    return var_list


def average_keys(variables, checkpoint, name=_options.EMA_NAME):
    """`[(checkpoint key, variable)]` that loads each variable from its average.

    Variables without an average in `checkpoint` load from their own key. A
    part of a partitioned variable `<full>` loads its slice of `<full>/<name>`.

    Raises:
      ValueError: the checkpoint holds no average named `name` for any of them.
    """
    averages = checkpoint_averages([key for key, _ in tf.train.list_variables(checkpoint)],
                                   name)
    keys = [checkpoint_key(var) for var in variables]
    if not any(key in averages for key in keys):
        raise ValueError("Checkpoint %r has no averages named %r for this model's variables. "
                         "If it was written before averaging began, train on with averaging "
                         "until the next checkpoint; or use the raw weights."
                         % (checkpoint, name))
    return [(averages.get(key, key), var) for key, var in zip(keys, variables)]


def averaged_variable_map(variables, checkpoint, name=_options.EMA_NAME):
    """The Saver var_list (see `saver_var_list`) of `average_keys`."""
    return saver_var_list(average_keys(variables, checkpoint, name))


def model_variables(graph):
    """The graph's global variables that are neither per-variable state of another
    variable (averages, their helpers, v1 optimizer slots: `<variable>/<suffix>`)
    nor optimizer state (see `optimizer_state`)."""
    variables = graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
    names = {v.op.name for v in variables}
    state = optimizer_state(graph)
    return [v for v in variables if v.op.name not in state
            and ("/" not in v.op.name or v.op.name.rsplit("/", 1)[0] not in names)]


def optimizer_state(graph):
    """The names of the variables the graph's optimizers keep, found from the graph:
    those a training op (`ApplyAdam`, `ResourceApplyMomentum`, ...) reads other
    than the variable it updates (slots, Adam's `beta1_power`, a Keras
    optimizer's hyperparameters), and every variable in the name scope of slots
    named `<scope>/<variable>/<slot>` (a Keras optimizer's, with its `iter`)."""
    variables = {v.op: v.op.name for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)}
    found = set()
    for op in graph.get_operations():
        if not _TRAINING_OP.match(op.type):
            continue
        for tensor in op.inputs[1:]:
            source = tensor.op
            while source not in variables and source.type in _READS and source.inputs:
                source = source.inputs[0].op
            if source in variables:
                found.add(variables[source])
    scopes = optimizer_scopes(found, set(variables.values()))
    return found | {name for name in variables.values()
                    if any(name.startswith(scope + "/") for scope in scopes)}


def optimizer_scopes(slots, names):
    """The name scopes `<scope>` of the slots named `<scope>/<variable>/<slot>`, a
    Keras optimizer's, among `slots`, given every variable's (or key's) name;
    a v1 optimizer's slot, `<variable>/<slot>`, has none."""
    scopes = set()
    for slot in slots:
        parts = slot.split("/")
        if "/".join(parts[:-1]) in names:
            continue
        for i in range(1, len(parts) - 1):
            if "/".join(parts[i:-1]) in names:
                scopes.add("/".join(parts[:i]))
                break
    return scopes


def normalized_path(path):
    if "://" in path:
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(path))


def directory_of(prefix):
    return os.path.dirname(prefix) or "."



@reports_unreadable_checkpoints
def describe(checkpoint_or_model_dir, *, name=_options.EMA_NAME):
    """What `estimator-ema inspect` prints: the checkpoint and one row per variable.

    Returns:
      `(checkpoint, rows)`, rows `(variable, shape, has_average, distance,
      relative_distance)` sorted by variable; the distances are the L2 norm of
      average minus weight and that over the weight's norm, or None without
      an average or without a weight. Averages and their helpers get no row.
    """
    name = _checks.check_name(name)
    checkpoint = resolve_checkpoint(checkpoint_or_model_dir)
    reader = tf.train.NewCheckpointReader(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    averages = checkpoint_averages(shapes, name)
    hidden = averages_and_helpers(shapes, name)
    rows = []
    for var in sorted((set(shapes) - hidden) | set(averages)):
        distance = relative = None
        if var in averages and var in shapes:
            weight = np.asarray(reader.get_tensor(var), np.float64)
            average = np.asarray(reader.get_tensor(averages[var]), np.float64)
            distance = float(np.linalg.norm(average - weight))
            relative = distance / (float(np.linalg.norm(weight)) + 1e-12)
        rows.append((var, shapes.get(var, shapes.get(averages.get(var))), var in averages,
                     distance, relative))
    return checkpoint, rows
