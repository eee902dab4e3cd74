"""Loading the averages from a checkpoint into a live session's variables."""

import logging

from estimator_ema import _averaging, _checks
from estimator_ema._compat import tf
from estimator_ema._selection import Selection
from estimator_ema.checkpoints import averaged_variable_map, model_variables, resolve_checkpoint

logger = logging.getLogger("estimator_ema")


def restore_averages(session, checkpoint_or_model_dir, variables=None, *,
                     name=_averaging.EMA_NAME, strict=True):
    """Loads each variable of a live TF1 session from its average in a checkpoint.

    Each variable `v` gets the checkpoint's `<v>/<name>`. With `strict=True`
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
        state such as averages and optimizer slots (`<variable>/<suffix>`);
        or a list of variables.
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
    mapping = averaged_variable_map(variables, checkpoint, name)
    reader = tf.train.NewCheckpointReader(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    absent = sorted(v.op.name for key, v in mapping.items() if key not in shapes)
    if absent:
        raise ValueError("Checkpoint %r has no value for variable(s) %s." % (checkpoint, absent))
    raw = sorted(v.op.name for key, v in mapping.items()
                 if key == v.op.name and v.dtype.base_dtype.is_floating)
    if raw and strict:
        raise ValueError("Checkpoint %r has no averages named %r for variable(s) %s; pass "
                         "strict=False to restore their raw values." % (checkpoint, name, raw))
    for key, var in sorted(mapping.items()):
        if shapes[key] != var.shape.as_list():
            raise ValueError("Checkpoint %r holds %s with shape %s, but variable %s has shape %s."
                             % (checkpoint, key, shapes[key], var.op.name, var.shape.as_list()))
    for key, var in sorted(mapping.items()):
        initializer = var.initializer
        session.run(initializer, {initializer.inputs[1]: reader.get_tensor(key)})
    if raw:
        logger.info("restore_averages: no average named %r for %s in %s; restored their raw "
                    "values.", name, raw, checkpoint)
    restored = {var.op.name: key for key, var in mapping.items()}
    logger.info("restore_averages: restored %d averages from %s.",
                sum(1 for var, key in restored.items() if key != var), checkpoint)
    return restored

