"""Lazy exponential moving averages of sparsely written variables (embedding
tables): exact per row, at a cost per step that follows the rows written.

A training step that updates an embedding table through `IndexedSlices`
gradients writes only the rows its batch looked up. Between two writes of a
row its weight `w` is constant, and each update moves the row's average `a`
toward it, `a - w <- d * (a - w)` (`d` the decay in effect; 1 on a step whose
update is not due). So with a scale `S` that every update divides by `d`,

    e = S * (a - w)

does not change for a row that no step writes, and a step that writes rows
changes theirs by `S * (w_old - w_new)` (`S` before that step's division).
The average variable holds `e` while training and `a = w + e / S` is read
back whenever needed. Per step that is, for the rows written only: their old
values (the forward pass's embedding lookup, or a gather before the write)
and their averages' rows, read beside the forward pass; after the write a
gather of the new rows and one scatter into the average; plus a division of
`S`. Nothing is kept per row.

`S` lives in a float64 scalar per lazy variable (or part), `<average>/lazy_scale`.
0 means the average variable holds plain averages: as initialized, restored,
or after `LazyRows.flush`, which runs before every checkpoint so that
checkpoints hold the exact average of every row under the stock name. The
first step after that converts (`e = a - w`, `S = 1`), and so does a step that
finds `S` past `RESCALE_ABOVE` (`e = e / S`, `S = 1`) before `e` could
overflow: both in one dense pass over the variable, rare.
"""

from estimator_ema._compat import IS_TF1, tf
from estimator_ema._graphs import ancestors, writers
from estimator_ema._options import LAZY_SCALE
from estimator_ema._variables import create_shadow, gather, read

RESCALE_ABOVE = 2.0 ** 64
"""A step that finds a scale above this rescales first: `e` then stays under
`2 ** 64 / (1 - decay)` times the largest change of a row, far from float32's
overflow, whatever the run's length."""

LAZY_DTYPES = (tf.float32, tf.float64)


def row_writes(variable, ran):
    """The ops among `ran` that write `variable` and their indices tensors, if
    each of them is a sparse row write (a sparse optimizer apply or a scatter
    on the variable itself, outside control flow); None otherwise, or if none
    writes it."""
    ops = sorted(writers([variable], ran), key=lambda op: op.name)
    if not ops:
        return None
    indices = []
    for op in ops:
        position = _indices_position(op)
        if (position is None or op.inputs[0] is not variable.op.outputs[0]
                or op._get_control_flow_context() is not None):
            return None
        indices.append(op.inputs[position])
    return ops, indices


def _indices_position(op):
    """The position of the `indices` input of a sparse row write op, or None."""
    kind = op.type
    if "Nd" in kind or not ("SparseApply" in kind or "Scatter" in kind):
        return None
    names = [arg.name for arg in op.op_def.input_arg]
    return names.index("indices") if "indices" in names else None


def before_the_step(global_step, ran):
    """The ops that every op among `ran` writing the global step waits for (None
    if none writes it: nothing is known to come before the step)."""
    waits = [ancestors(op) for op in writers([global_step], ran)]
    return set.intersection(*waits) if waits else None


def unsupported(variable, average):
    """Why `variable` cannot be averaged lazily whatever its writes, or None."""
    if variable.dtype.base_dtype not in LAZY_DTYPES:
        return "lazy rows need float32 or float64"
    if not IS_TF1 and not hasattr(average, "handle"):
        return "reference variables on TF 2 (its tf.cond cannot assign them)"
    return None


class _Lazy(object):
    """One lazily averaged variable: its average, its scale, and the rows the
    step writes with their values before the writes.

    The rows are the writes' indices, traced back through `Unique`, `Reshape`
    and `Identity` to a tensor the step computes early (a sparse gradient's
    indices, duplicates and all: every entry of a row computes the same
    value), so that what comes before the writes runs beside the forward and
    backward pass. Where the forward pass gathers the variable's rows at one
    of those tensors before the writes (an embedding lookup), its rows are
    the old values; elsewhere they are gathered."""

    def __init__(self, variable, average, writes, indices):
        self.variable, self.average, self.writes = variable, average, writes
        self.scale = create_shadow(average, LAZY_SCALE, tf.constant(0.0, tf.float64),
                                   use_resource=True)
        before = set.intersection(*[ancestors(op) for op in writes])
        traced = [_trace(i, variable, before) for i in indices]
        flat = [_flat(i) for i, _ in traced]
        if len({i.dtype for i in flat}) > 1:
            flat = [tf.cast(i, tf.int64) for i in flat]
        self.rows = flat[0] if len(flat) == 1 else tf.concat(flat, 0)
        if all(looked_up is not None for _, looked_up in traced):
            width = [-1] + variable.shape.as_list()[1:]
            old = [tf.reshape(rows, width) for _, rows in traced]
            self.old = old[0] if len(old) == 1 else tf.concat(old, 0)
        else:
            self.old = gather(variable, self.rows)

    def value(self):
        """The average as a tensor: `a`, or `w + e / S` while scaled."""
        scale = read(self.scale)
        average = read(self.average)
        return tf.where_v2(tf.equal(scale, 0.0), average,
                           read(self.variable) + average / tf.cast(scale, average.dtype))


def _trace(indices, variable, before):
    """(the earliest tensor `indices` was computed from that holds the same
    values, the rows of `variable` a gather among the ops `before` read at one
    of them, or None)."""
    while True:
        for op in indices.consumers():
            if (op in before and _gathers(op, variable) and op.inputs[1] is indices
                    and op._get_control_flow_context() is None):
                return indices, op.outputs[0]
        op = indices.op
        if ((op.type == "Unique" and indices is op.outputs[0])
                or op.type in ("Reshape", "Identity")):
            indices = op.inputs[0]
        else:
            return indices, None


def _gathers(op, variable):
    """Whether `op` gathers rows of `variable` along its first axis."""
    if op.type == "ResourceGather":
        return (hasattr(variable, "handle") and op.inputs[0] is variable.handle
                and op.get_attr("batch_dims") == 0)
    if op.type not in ("GatherV2", "Gather") or hasattr(variable, "handle"):
        return False
    if op.type == "GatherV2" and (tf.get_static_value(op.inputs[2]) != 0
                                  or op.get_attr("batch_dims") != 0):
        return False
    return op.inputs[0] is variable.value() or op.inputs[0] is variable.op.outputs[0]


def _flat(indices):
    return indices if indices.shape.ndims == 1 else tf.reshape(indices, [-1])


class LazyRows(object):
    """The lazily averaged variables of one exponential moving average.

    Build it while the training step's writes are still unordered, with the
    decay in effect after the step (and, with `every_n_steps`, whether its
    update is due) read from the global step before them. Before the writes,
    beside the forward and backward pass, each step rescales if needed
    (`guard`), reads the rows it will write, their averages and the scale,
    and divides the scale; `update()` builds what runs after the writes: a
    read of the rows written and a scatter into the averages.
    """

    def __init__(self, found, decay, due=None):
        """`found`: `[(variable, average, writes, indices)]`."""
        self.lazy = [_Lazy(*args) for args in found]
        self.guard = tf.cond(self._scaled(), _true, self._rescale)
        decay = tf.cast(decay, tf.float64)
        before = [self.guard.op]
        for lazy in self.lazy:
            with tf.control_dependencies([self.guard]):
                scale = read(lazy.scale)
                lazy.scale_then = tf.cast(scale, lazy.average.dtype.base_dtype)
                # e + S * w_old: the scatter after the writes subtracts S * w_new.
                lazy.kept = gather(lazy.average, lazy.rows) + lazy.old * lazy.scale_then
            divided = tf.assign(lazy.scale, scale / decay if due is None
                                else tf.where_v2(due, scale / decay, scale))
            before += [lazy.old.op, divided.op]
        for lazy in self.lazy:
            for op in lazy.writes:
                for wait in before:
                    op._add_control_input(wait)

    def _scaled(self):
        """Whether every average is scaled, with its scale in range."""
        scales = [read(lazy.scale) for lazy in self.lazy]
        scales = scales[0] if len(scales) == 1 else tf.stack(scales)
        scaled = tf.logical_and(scales >= 1.0, scales <= RESCALE_ABOVE)
        return scaled if len(self.lazy) == 1 else tf.reduce_all(scaled)

    def _rescale(self):
        """`e <- a - w` where plain, `e <- e / S` where scaled; then `S <- 1`."""
        written = []
        for lazy in self.lazy:
            scale = read(lazy.scale)
            average = read(lazy.average)
            written.append(tf.assign(lazy.average, tf.where_v2(
                tf.equal(scale, 0.0), average - read(lazy.variable),
                average / tf.cast(scale, average.dtype))))
        with tf.control_dependencies(written):
            ones = [tf.assign(lazy.scale, tf.constant(1.0, tf.float64)) for lazy in self.lazy]
        with tf.control_dependencies(ones):
            return tf.constant(True)

    def update(self):
        """The op that folds the step's row writes into the averages: built where
        it runs after the writes."""
        scatters = []
        for lazy in self.lazy:
            with tf.control_dependencies(lazy.writes):
                new = gather(lazy.variable, lazy.rows)
            scatters.append(tf.scatter_update(lazy.average, lazy.rows,
                                              lazy.kept - new * lazy.scale_then))
        return tf.group(*scatters)

    def flush(self):
        """An op that leaves plain averages in every average variable (`S = 0`)."""
        with tf.control_dependencies([tf.assign(lazy.average, lazy.value())
                                      for lazy in self.lazy]):
            return self.start()

    def start(self):
        """An op that marks every average plain (`S = 0`), for averages just set
        from their weights."""
        return tf.group(*[tf.assign(lazy.scale, tf.constant(0.0, tf.float64))
                          for lazy in self.lazy])


def _true():
    return tf.constant(True)
