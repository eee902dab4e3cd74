"""The variables an averager keeps: creating them next to the weights (and
partitioned as the weights are), finding them, reading them."""

from estimator_ema._compat import tf
from estimator_ema._options import HELPERS, count_name, shadow_name

def read(var):
    """A read of `var` made in the current control-dependency context (one op;
    a `tf.distribute` variable outside its replica context: its own read)."""
    handle = _handle(var)
    if handle is not None:
        return tf.raw_ops.ReadVariableOp(resource=handle, dtype=var.dtype.base_dtype)
    return var.read_value()


def _handle(var):
    """`var`'s resource handle; None for a reference variable, or a `tf.distribute`
    variable outside its replica context (whose `handle` raises ValueError there)."""
    try:
        return getattr(var, "handle", None)
    except ValueError:
        return None


def gather(var, rows):
    """Rows `rows` of `var`, read after the ops the current context depends on: a
    resource variable's rows alone (`ResourceGather`); a reference variable's
    from its reference (through a read, TF 1.15's grappler can give a gather
    ordered after a write the value from before it)."""
    if hasattr(var, "handle"):
        return tf.gather(var, rows)
    return tf.gather(var.op.outputs[0], rows)


def read_fresh(var):
    """The value of `var`, read after the ops the current context depends on.

    A TF 1.15 reference variable's plain read can observe the value from before
    an update it is ordered after (seen with grappler on); adding zero under
    the variable's lock returns the value the update left.
    """
    if hasattr(var, "handle"):
        return read(var)
    return tf.assign_add(var, tf.zeros([], var.dtype.base_dtype), use_locking=True)


def create_shadow(var, name, initial_value, suffix="", use_resource=None, columns=None):
    """Creates the non-trainable variable `<var>/<name><suffix>` next to `var`.

    Built under `init_scope`, so it never picks up the control dependencies or
    control flow of the place that asks for it. Raises RuntimeError if that name
    is already taken (two averagers with one name on the same variables).

    The shadow of a part of a partitioned variable is a part too: it is saved,
    as stock `ExponentialMovingAverage` (`slot_creator`) saves it, as a slice
    of `<full name>/<name><suffix>` (see `_slice_like`); a shadow of
    `columns` columns (a lazy average's row state, see `_rows`) as a slice of
    the rows of a variable part partitioned along its first axis. It is a
    resource variable if `use_resource` is True, or if None and `var` is one.
    """
    expected = shadow_name(var.op.name, name) + suffix
    if use_resource is None:
        use_resource = hasattr(var, "handle")
    with tf.init_scope(), var.graph.colocate_with(var), tf.name_scope(var.op.name + "/"):
        # Under a one-replica MirroredStrategy the update runs in replica
        # context, where TF 1.15 needs to be told how to aggregate it.
        shadow = tf.Variable(
            initial_value, name=name + suffix, trainable=False, use_resource=use_resource,
            collections=[tf.GraphKeys.GLOBAL_VARIABLES],
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    if shadow.op.name != expected:
        raise RuntimeError(
            "Variable %s already has an average named %r; use another 'name' or "
            "average it once." % (var.op.name, name + suffix))
    _slice_like(shadow, var, name + suffix, columns)
    return shadow


def state_variables(averager, graph):
    """Every variable `averager` keeps, found by name among `graph`'s global
    variables: the averages, their zero-debias helpers and the SWA count."""
    names = {a.op.name for a in averager.averages}
    names.update([shadow_name(n, h) for n in names for h in HELPERS]
                 + [count_name(averager.options.name)])
    return [v for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES) if v.op.name in names]


def _slice_like(shadow, var, name, columns=None):
    """Saves `shadow` as a slice of `<full name>/<name>` when `var` is the part of
    a partitioned variable saved as a slice of `<full name>`.

    A scalar shadow (a zero-debias step count) stays a variable of its own, and
    one of lower rank is sliced along the leading dimensions, as `slot_creator` does;
    one of `columns` columns along the first (the rows of `var`, whose part
    they are).
    """
    info = var._get_save_slice_info()
    rank = shadow.shape.ndims
    if info is None or rank == 0:
        return
    if columns is None:
        full, offset, shape = info.full_shape[:rank], info.var_offset[:rank], info.var_shape[:rank]
    else:
        full, offset, shape = ([info.full_shape[0], columns], [info.var_offset[0], 0],
                               [info.var_shape[0], columns])
    shadow._set_save_slice_info(tf.Variable.SaveSliceInfo(
        info.full_name + "/" + name, full, offset, shape))


def create_count(name, initial_value, global_step):
    """Creates the int64 variable `<name>/count` next to the global step."""
    expected = count_name(name)
    with tf.init_scope(), global_step.graph.colocate_with(global_step), tf.name_scope(name + "/"):
        count = tf.Variable(tf.constant(initial_value, tf.int64), name="count",
                            trainable=False, use_resource=True,
                            collections=[tf.GraphKeys.GLOBAL_VARIABLES])
    if count.op.name != expected:
        raise RuntimeError(
            "The graph already has an average named %r (variable %s); use another "
            "'name'." % (name, expected))
    return count
