"""Loading the averages from a checkpoint into a live session's variables."""

import logging

from estimator_ema import _checks, _options
from estimator_ema._compat import tf
from estimator_ema._selection import Selection
from estimator_ema.checkpoints import (average_keys, checkpoint_key, model_variables,
                                       resolve_checkpoint)

logger = logging.getLogger("estimator_ema")


def restore_averages(session, checkpoint_or_model_dir, variables=None, *,
                     name=_options.EMA_NAME, strict=True):
    """Loads each variable of a live TF1 session from its average in a checkpoint.

    Each variable `v` gets the checkpoint's `<v>/<name>` (a part of a
    partitioned variable `<full>` its slice of `<full>/<name>`). With `strict=True`
    every floating-point variable must have one; with `strict=False` those
    without one get their raw checkpoint value `<v>` and are logged (logger
    `estimator_ema`, INFO). Variables that are not floating point (the global
    step, counters) always get their raw value. Values are fed to the
    variables' initializers one at a time: the graph gains no ops, so a
    finalized graph is fine.

    Example:

        with tf.compat.v1.Session(graph=graph) as session:
            estimator_ema.restore_averages(session, "/models/run1")
            session.run(predictions, {inputs: batch})

    Args:
      session: a `tf.compat.v1.Session` whose graph holds the variables.
      checkpoint_or_model_dir: str, a checkpoint prefix or a model_dir.
      variables: None, for the graph's global variables except per-variable
        state such as averages and optimizer slots (`<variable>/<suffix>`)
        and optimizer state (`checkpoints.optimizer_state`: v1 Adam's
        `beta1_power`, a Keras optimizer's slots and hyperparameters); or a
        list of variables.
      name: str, the averages' suffix.
      strict: bool, whether a missing average is an error.

    Returns:
      `{variable name: checkpoint key it was loaded from}`.

    Raises:
      TypeError: arguments of the wrong type.
      ValueError: no checkpoint there, no averages named `name` for these
        variables, (strict) a variable without an average, a variable missing
        from the checkpoint, or a shape that differs from the checkpoint's.
    """
    if not (hasattr(session, "run") and isinstance(getattr(session, "graph", None), tf.Graph)):
        raise TypeError("'session' must be a tf.compat.v1.Session (got %r)." % (session,))
    name = _checks.check_name(name)
    strict = _checks.check_bool("strict", strict)
    checkpoint = resolve_checkpoint(checkpoint_or_model_dir)
    if variables is None:
        variables = model_variables(session.graph)
    else:
        variables = Selection(variables).candidates(session.graph)
    pairs = sorted(average_keys(variables, checkpoint, name), key=lambda p: p[1].op.name)
    reader = tf.train.NewCheckpointReader(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    absent = [v.op.name for key, v in pairs if key not in shapes]
    if absent:
        raise ValueError("Checkpoint %r has no value for variable(s) %s." % (checkpoint, absent))
    raw = [v.op.name for key, v in pairs
           if key == checkpoint_key(v) and v.dtype.base_dtype.is_floating]
    if raw and strict:
        raise ValueError("Checkpoint %r has no averages named %r for variable(s) %s; pass "
                         "strict=False to restore their raw values." % (checkpoint, name, raw))
    for key, var in pairs:
        expected = _full_shape(var)
        if shapes[key] != expected:
            raise ValueError("Checkpoint %r holds %s with shape %s, but variable %s has shape %s."
                             % (checkpoint, key, shapes[key], var.op.name, expected))
    for key, var in pairs:
        initializer = var.initializer
        session.run(initializer, {initializer.inputs[1]: _own_slice(reader.get_tensor(key), var)})
    if raw:
        logger.info("restore_averages: no average named %r for %s in %s; restored their raw "
                    "values.", name, raw, checkpoint)
    restored = {var.op.name: key for key, var in pairs}
    logger.info("restore_averages: restored %d averages from %s.",
                sum(1 for key, var in pairs if key != checkpoint_key(var)), checkpoint)
    return restored



def _full_shape(var):
    """The shape `var` has in a checkpoint: the whole variable's, for a part."""
    info = var._get_save_slice_info()
    return var.shape.as_list() if info is None else list(info.full_shape)


def _own_slice(value, var):
    """`var`'s slice of the checkpoint tensor `value` (all of it, unless a part)."""
    info = var._get_save_slice_info()
    if info is None:
        return value
    return value[tuple(slice(offset, offset + size)
                       for offset, size in zip(info.var_offset, info.var_shape))]
