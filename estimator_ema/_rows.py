"""Lazy exponential moving averages of sparsely written variables (embedding
tables): exact per row, at a cost per step that follows the rows written, on
one machine and on a parameter-server cluster whose tasks train at once.

A training step that updates an embedding table through `IndexedSlices`
gradients writes only the rows its batch looked up. Between two writes of a
row its weight `w` is constant, and each update moves the row's average `a`
toward it, `a - w <- d * (a - w)` (`d` the decay in effect; 1 on a step whose
update is not due). So with a clock `L` that every update advances by
`-log(d)`, a row's average at clock `L` is

    a(L) = w + (a_r - w) * exp(t_r - L)

where `a_r` is its average at clock `t_r`, the last time it was brought up to
date, as long as `w` has not changed since. Each lazily averaged variable (or
part of a partitioned one) keeps, beside it on its parameter server, each
row's `(a_r, t_r)` in one row of the average variable (`a_r` flattened, then
the float64 `t_r`: see `_Lazy`) and `L` in a float64 scalar
`<average>/lazy_clock`. Before a step writes rows
it brings their averages up to date (`a_r <- a(L)`, `t_r <- L`: "folds" them)
and advances `L`; nothing runs after the writes, nothing touches an unwritten
row, and nothing ever needs rescaling (`L` grows by `-log(d)` a step).

The state belongs to the rows, not to a task: a fold sets each row's
`(a_r, t_r)` from the row's own weight and state, never adds a difference of
weights, so when several tasks train at once (asynchronous workers) a write
by another task between this task's embedding lookup and its own write is
counted once. Its weight is read before its state (a write that the read
sees was folded before it), and its state is read by one gather and written
by one scatter, each under the average variable's lock, so a row's average
is never paired with another fold's row clock. An interleaving can only
fold a row from a weight that another task's write has already replaced
(the time since that write counted at the old weight): a deviation of the
kind stock averaging's own races make, which decays with the average.

Checkpoints hold plain averages under the stock names, computed when the
Saver saves (`saveables`) without writing any variable: a chief saving while
workers train races nothing into the state. Restoring sets `a_r` to the
checkpoint's average and `t_r` to the current clock.
"""

import numpy as np

from estimator_ema._compat import IS_TF1, tf
from estimator_ema._graphs import SAVES, ancestors, writers
from estimator_ema._options import LAZY_CLOCK
from estimator_ema._variables import create_shadow, gather, read
from estimator_ema.checkpoints import checkpoint_key

try:  # TF 1.15 and TF 2
    from tensorflow.python.training.saving.saveable_object import SaveableObject, SaveSpec
except ImportError:  # pragma: no cover
    from tensorflow.python.training.saver import BaseSaverBuilder
    SaveableObject, SaveSpec = BaseSaverBuilder.SaveableObject, BaseSaverBuilder.SaveSpec

LAZY_DTYPES = (tf.float32, tf.float64)

_LEAST_DECAY = 1e-300
"""Decays are taken at least this for the clock, so that a decay of 0 advances
it by a finite 690.8 (every older average then counts for exp(-690.8) = 0)."""


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


def _values_position(op):
    """The position of the rows' values (`grad` or `updates`) among the inputs of
    a sparse row write op."""
    names = [arg.name for arg in op.op_def.input_arg]
    return names.index("grad") if "grad" in names else names.index("updates")


def before_the_step(global_step, ran):
    """The ops that every op among `ran` writing the global step waits for (None
    if none writes it: nothing is known to come before the step)."""
    waits = [ancestors(op) for op in writers([global_step], ran)]
    return set.intersection(*waits) if waits else None


def unsupported(variable):
    """Why `variable` cannot be averaged lazily whatever its writes, or None."""
    if variable.dtype.base_dtype not in LAZY_DTYPES:
        return "lazy rows need float32 or float64"
    if not variable.shape[1:].is_fully_defined():
        return "rows of an unknown shape"
    if not IS_TF1 and not hasattr(variable, "handle"):
        return "reference variables on TF 2 (its tf.cond cannot assign them)"
    info = variable._get_save_slice_info()
    if info is not None and (any(info.var_offset[1:])
                             or info.var_shape[1:] != info.full_shape[1:]):
        return "partitioned along an axis other than the first"
    return None


class _Lazy(object):
    """One lazily averaged variable (or part): its row state and clock, and the
    rows the step writes with their weights before the writes.

    The row state is one variable, the average's (`<variable>/<name>`): each
    row holds the row's average `a_r` flattened, then its float64 row clock
    `t_r` (in two float32 columns of a float32 table, bit for bit), so one
    gather reads a row's state and one scatter writes it, under the
    variable's lock.

    The rows are the writes' indices, traced back through `Unique`, `Reshape`
    and `Identity` to a tensor the step computes early (a sparse gradient's
    indices, duplicates and all: every entry of a row computes the same
    value). Where the forward pass gathers the variable's rows at one of
    those tensors before the writes (an embedding lookup), its rows are the
    weights; elsewhere they are gathered."""

    def __init__(self, variable, name, writes, indices):
        self.variable, self.writes = variable, writes
        self._row_shape = variable.shape[1:].as_list()
        self._width = int(np.prod(self._row_shape, dtype=np.int64))
        dtype = variable.dtype.base_dtype
        # Columns of the row clock: a float64 is two float32s.
        self._clock_width = 2 if dtype == tf.float32 else 1
        self.average = create_shadow(
            variable, name, lambda: self._dated(variable.initial_value, tf.zeros([], tf.float64)),
            use_resource=True, columns=self._width + self._clock_width)
        self.clock = create_shadow(self.average, LAZY_CLOCK, tf.constant(0.0, tf.float64),
                                   use_resource=True)
        before = set.intersection(*[ancestors(op) for op in writes])
        traced = [_trace(i, variable, before) for i in indices]
        with _beside(self.average):
            # The fold waits for the values the writes will write (a gradient):
            # it never delays the looked-up rows on their way to the forward
            # pass, and on a cluster it waits for nothing the writes do not
            # already receive (one transfer of a tensor to a device serves
            # every op there that reads it).
            self._arrived = [tf.shape(op.inputs[_values_position(op)]) for op in writes]
            flat = [_flat(i) for i, _ in traced]
            if len({i.dtype for i in flat}) > 1:
                flat = [tf.cast(i, tf.int64) for i in flat]
            self.rows = flat[0] if len(flat) == 1 else tf.concat(flat, 0)
            if all(looked_up is not None for _, looked_up in traced):
                width = [-1] + self._row_shape
                old = [rows if rows.shape.ndims == len(width) else tf.reshape(rows, width)
                       for _, rows in traced]
                self.old = old[0] if len(old) == 1 else tf.concat(old, 0)
            else:
                self.old = gather(variable, self.rows)

    def _join(self, averages, then):
        """The row state of rows whose averages are `averages` (shaped as the
        variable's rows) as of the row clocks `then` (float64, one per row)."""
        if len(self._row_shape) != 1:
            averages = tf.reshape(averages, [-1, self._width])
        if self._clock_width == 2:
            then = tf.bitcast(then, tf.float32)
        else:
            then = tf.expand_dims(then, 1)
        return tf.concat([averages, then], 1)

    def _at(self, weights, state, now):
        """(the averages of the rows of state `state`, whose weights are `weights`,
        at clock `now`; their row clocks then): each row's average at `now`,
        `weights + (average - weights) * exp(then - now)`, dated `now`, or dated
        `then` if its row clock is newer than `now` (a task that read the clock
        before another stamped the row), never extrapolated past `then`."""
        average, then = tf.split(state, [self._width, self._clock_width], 1)
        if len(self._row_shape) != 1:
            average = tf.reshape(average, [-1] + self._row_shape)
        # A row's clock as one float64 (shape [rows]).
        then = (tf.bitcast(then, tf.float64) if self._clock_width == 2
                else tf.squeeze(then, 1))
        later = tf.maximum(then, now)
        factor = tf.cast(tf.exp(then - later), average.dtype.base_dtype)
        factor = tf.reshape(factor, [-1] + [1] * len(self._row_shape))
        return weights + (average - weights) * factor, later

    def fold(self, log_decay):
        """The ops that bring the rows' averages up to date and then advance the
        clock by `-log_decay` (see `log_decay`): (the row state's write, the
        clock's)."""
        with _beside(self.average):
            with tf.control_dependencies([self.old] + self._arrived):
                state = gather(self.average, self.rows)
            with tf.control_dependencies([state]):
                now = read(self.clock)
            folded = tf.raw_ops.ResourceScatterUpdate(
                resource=self.average.handle, indices=self.rows,
                updates=self._join(*self._at(self.old, state, now)))
            with tf.control_dependencies([now]):
                advanced = tf.raw_ops.AssignSubVariableOp(resource=self.clock.handle,
                                                          value=log_decay)
        return [folded, advanced]

    def value(self):
        """The average as a tensor, every row brought up to date: the weights
        read first (a copy), then the row state and the clock."""
        with _beside(self.average):
            weights = _copy(self.variable)
            with tf.control_dependencies([weights]):
                state = read(self.average)
            with tf.control_dependencies([state]):
                now = read(self.clock)
            return self._at(weights, state, now)[0]

    def restore(self, value):
        """An op that sets the average to `value` (plain) as of the clock now
        (0 on a parameter server that has just started)."""
        with _beside(self.average):
            now = tf.cond(tf.raw_ops.VarIsInitializedOp(resource=self.clock.handle),
                          lambda: read(self.clock), lambda: tf.constant(0.0, tf.float64))
            value = tf.reshape(value, tf.shape(self.variable))
            return tf.group(tf.raw_ops.AssignVariableOp(resource=self.average.handle,
                                                        value=self._dated(value, now)),
                            tf.raw_ops.AssignVariableOp(resource=self.clock.handle, value=now))

    def start(self):
        """An op that sets every row's average to its weight, dated now."""
        with _beside(self.average):
            return tf.raw_ops.AssignVariableOp(
                resource=self.average.handle,
                value=self._dated(read(self.variable), read(self.clock)))

    def _dated(self, averages, now):
        """The row state of every row, whose averages are `averages`, dated `now`."""
        return self._join(averages, tf.fill(tf.shape(averages)[:1], now))


def _copy(variable):
    """The value of `variable` as of now, which later writes do not change (a
    reference variable's read shares its buffer)."""
    if hasattr(variable, "handle"):
        return read(variable)
    return tf.gather(variable.op.outputs[0], tf.range(tf.shape(variable)[0]))


def _beside(average):
    """Ops built in this context run where `average` lives (its parameter server)."""
    return average.graph.colocate_with(average)


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


def log_decay(decay):
    """`log(decay)` in float64, what an update of decay `decay` moves the clocks
    back by (they advance by `-log(decay)`; 0 for the decay 1 of an update that
    is not due). One tensor goes to each device that holds averages, and every
    op there reads it as it is: an op there that negated it (`-log(decay)`)
    would have Grappler fold a negation of that into a read of the logarithm
    itself, and send both."""
    return tf.math.log(tf.maximum(tf.cast(decay, tf.float64), _LEAST_DECAY))


class LazyRows(object):
    """The lazily averaged variables of one exponential moving average.

    Build it while the training step's writes are still unordered, with the
    logarithm of the decay in effect after the step (see `log_decay`; 0 where,
    with `every_n_steps`, its update is not due) read from the global step
    before them. Before the writes, each step folds the rows it will write (see
    `_Lazy.fold`) and advances each clock by `-log_decay`; nothing runs after
    the writes.
    """

    def __init__(self, found, log_decay, name):
        """`found`: `[(variable, writes, indices)]`; `log_decay`: the step's
        `log_decay` (float64 scalar), sent once to each device that holds
        averages; `name`: the averages' (`<variable>/<name>`)."""
        self.lazy = [_Lazy(variable, name, writes, indices)
                     for variable, writes, indices in found]
        for lazy in self.lazy:
            before = lazy.fold(log_decay)
            for op in lazy.writes:
                for wait in before:
                    op._add_control_input(wait)

    def saveables(self):
        """What Savers save instead of the lazy averages' row states and clocks:
        per average (or part), a `SaveableObject` that saves its plain values
        under its checkpoint key (a part as a slice of its variable's) and
        restores them (see `_Lazy.restore`)."""
        return [_Saveable(lazy) for lazy in self.lazy]

    def state(self):
        """Every variable the saveables stand for."""
        return [v for lazy in self.lazy for v in (lazy.average, lazy.clock)]

    def raw_saves(self):
        """The save ops that save a lazy average as it is kept (rows not brought up
        to date), not through its saveable: a Saver other than the graph's
        default one, built over the average variable itself."""
        found = set()
        for lazy in self.lazy:
            tensors = [lazy.average.handle]
            # A Saver saves a variable through at most a read and two identities.
            for _ in range(3):
                consumers = [op for t in tensors for op in t.consumers()]
                found.update(op for op in consumers if op.type in SAVES)
                tensors = [t for op in consumers if op.type in _READS for t in op.outputs]
        return sorted(op.name for op in found)


_READS = ("ReadVariableOp", "Identity")


class _Saveable(SaveableObject):
    """The plain values of one lazy average (or part), on its device."""

    def __init__(self, lazy):
        self._lazy = lazy
        # Saved as the variable's average: a part as the same slice.
        info = lazy.variable._get_save_slice_info()
        spec = SaveSpec(lazy.value(), info.spec if info else "", checkpoint_key(lazy.average))
        super(_Saveable, self).__init__(lazy.average, [spec], lazy.average.op.name)

    def restore(self, restored_tensors, restored_shapes):
        return self._lazy.restore(restored_tensors[0])
