"""Builds the averaging variables and update ops; hooks and decorators share it.

Shadow variables are named exactly as `tf.compat.v1.train.ExponentialMovingAverage`
names them, `<variable op name>/<name>`, and are placed next to their variable,
so stock `ExponentialMovingAverage(decay).variables_to_restore()` reads the
checkpoints this package writes, and the other way round.
"""

import contextlib
import logging

from estimator_ema import _checks, _rows
from estimator_ema._compat import IS_TF1, tf
from estimator_ema._graphs import AVERAGING_SCOPES
from estimator_ema._selection import Selection

logger = logging.getLogger("estimator_ema")

EMA_NAME = "ExponentialMovingAverage"
SWA_NAME = "StochasticWeightAverage"

DEBIAS_HELPERS = ("biased", "local_step")
"""The zero-debias helpers of an average: `<average>/biased`, `<average>/local_step`."""

HELPERS = DEBIAS_HELPERS + (_rows.LAST_STEP,)
"""Every helper variable an average may have, `<average>/<helper>`: the zero-debias
helpers and a lazy average's per-row `last_step`."""


def shadow_name(var_name, name):
    """The checkpoint name of the average of the variable called `var_name`."""
    return "%s/%s" % (var_name, name)


def count_name(name):
    """The checkpoint name of the number of entries of the SWA called `name`."""
    return name + "/count"


class _Options(object):
    """What every averager is told: which variables, and the shadow suffix."""

    def __init__(self, variables, include, exclude, name):
        self.selection = Selection(variables, include, exclude)
        self.name = _checks.check_name(name)


class EmaOptions(_Options):
    """Validated exponential-moving-average options, shared by hook and decorator.

    Args:
      decay: float in [0, 1), the decay `d` of `avg <- d * avg + (1 - d) * w`.
      num_updates: bool; if True the decay in effect is
        `min(decay, (1 + n) / (10 + n))` with `n` the global step after the update.
      zero_debias: bool; if True the average is debiased as in Adam,
        `avg = biased / (1 - d ** t)` with `biased` starting at zero and `t` the
        number of updates, so the initial weights carry no weight.
      variables: None (trainable variables and batch-norm moving statistics), a
        list of variables, or a callable returning one at graph-build time.
      include: regex or list of regexes; keep only variables whose op name
        matches one (`re.search`).
      exclude: regex or list of regexes; drop variables whose op name matches one.
      every_n_steps: positive int `k`; update when the global step after the
        update is a multiple of `k`, with decay `d ** k` (same time scale).
      name: the shadow suffix, `<variable>/<name>`.
      skip_nonfinite: bool; if True a step whose selected weights hold a NaN or
        an infinity leaves every average (and the debias count) unchanged.
      lazy_rows: bool; if True (the default) a variable that the training step
        writes only through sparse row updates (embedding tables) has its
        average brought up to date row by row, exactly, when a row is written
        and before each checkpoint (see `_rows`); False averages every row
        every step. Lazy rows combine with `num_updates` and `every_n_steps`;
        with `zero_debias` or `skip_nonfinite` every variable is averaged
        densely (logged).
    """

    def __init__(self, decay=0.999, num_updates=True, zero_debias=False, variables=None,
                 include=None, exclude=None, every_n_steps=1, name=EMA_NAME,
                 skip_nonfinite=False, lazy_rows=True):
        self.decay = _checks.check_decay(decay)
        self.num_updates = _checks.check_bool("num_updates", num_updates)
        self.zero_debias = _checks.check_bool("zero_debias", zero_debias)
        self.every_n_steps = _checks.check_positive_int("every_n_steps", every_n_steps)
        super(EmaOptions, self).__init__(variables, include, exclude, name)
        self.skip_nonfinite = _checks.check_bool("skip_nonfinite", skip_nonfinite)
        self.lazy_rows = _checks.check_bool("lazy_rows", lazy_rows)


class SwaOptions(_Options):
    """Validated stochastic-weight-averaging options, shared by hook and decorator.

    Args:
      start_step: non-negative int; the weights after global step `s` enter the
        mean iff `s >= start_step` and `(s - start_step) % average_period == 0`.
        Global step 0 stands for the weights training starts from, so
        `start_step=0` includes them.
      average_period: positive int, the number of steps between two entries.
      variables, include, exclude: as for `EmaOptions`.
      name: the shadow suffix, `<variable>/<name>`; the number of entries lives
        in `<name>/count`.
    """

    def __init__(self, start_step, average_period=1, variables=None, include=None,
                 exclude=None, name=SWA_NAME):
        self.start_step = _checks.check_non_negative_int("start_step", start_step)
        self.average_period = _checks.check_positive_int("average_period", average_period)
        super(SwaOptions, self).__init__(variables, include, exclude, name)


def _read(var):
    """A read of `var` made in the current control-dependency context (one op)."""
    if hasattr(var, "handle"):
        return tf.raw_ops.ReadVariableOp(resource=var.handle, dtype=var.dtype.base_dtype)
    return var.read_value()


def read_step(global_step):
    """The global step, read after the ops the current context depends on.

    A TF 1.15 reference variable's plain read can observe the value from before
    an update it is ordered after (seen with grappler on); adding zero under
    the variable's lock returns the value the update left.
    """
    if hasattr(global_step, "handle"):
        return _read(global_step)
    return tf.assign_add(global_step, tf.zeros([], global_step.dtype.base_dtype),
                         use_locking=True)


def create_shadow(var, name, initial_value, suffix=""):
    """Creates the non-trainable variable `<var>/<name><suffix>` next to `var`.

    Built under `init_scope`, so it never picks up the control dependencies or
    control flow of the place that asks for it. Raises RuntimeError if that name
    is already taken (two averagers with one name on the same variables).

    The shadow of a part of a partitioned variable is a part too: it is saved,
    as stock `ExponentialMovingAverage` (`slot_creator`) saves it, as a slice
    of `<full name>/<name><suffix>` (see `_slice_like`).
    """
    expected = shadow_name(var.op.name, name) + suffix
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
    _slice_like(shadow, var, name + suffix)
    return shadow


def state_variables(averager, graph):
    """Every variable `averager` keeps, found by name among `graph`'s global
    variables: the averages, their zero-debias helpers and the SWA count."""
    names = {a.op.name for a in averager.averages}
    names.update([shadow_name(n, h) for n in names for h in HELPERS]
                 + [count_name(averager.options.name)])
    return [v for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES) if v.op.name in names]


def _slice_like(shadow, var, name):
    """Saves `shadow` as a slice of `<full name>/<name>` when `var` is the part of
    a partitioned variable saved as a slice of `<full name>`.

    A scalar shadow (a zero-debias step count) stays a variable of its own, and
    one of lower rank is sliced along the leading dimensions, as `slot_creator` does.
    """
    info = var._get_save_slice_info()
    rank = shadow.shape.ndims
    if info is None or rank == 0:
        return
    shadow._set_save_slice_info(tf.Variable.SaveSliceInfo(
        info.full_name + "/" + name, info.full_shape[:rank], info.var_offset[:rank],
        info.var_shape[:rank]))


class _Averager(object):
    """What every averager shares: the global step, the selection, a shadow per
    selected variable, the gated update, initialization from the weights and
    the distance summaries.

    Subclasses say when an update is due (`_due`) and what it does (`_apply`).
    """

    # Used in messages: "<KIND> need a global step".
    KIND = "Weight averages"

    def __init__(self, options, graph=None):
        self.options = options
        graph = graph or tf.get_default_graph()
        self.global_step = tf.train.get_global_step(graph)
        if self.global_step is None:
            raise RuntimeError(
                "%s need a global step; create one with "
                "tf.compat.v1.train.get_or_create_global_step() in the model_fn." % self.KIND)
        self.variables = options.selection.select(graph)
        self.averages = [create_shadow(v, options.name, v.initial_value)
                         for v in self.variables]
        self._lazy = {}  # {index of a variable: _rows.LazyRows}
        listed = set(id(v) for v in graph.get_collection(tf.GraphKeys.MOVING_AVERAGE_VARIABLES))
        for var in self.variables:
            if id(var) not in listed:
                graph.add_to_collection(tf.GraphKeys.MOVING_AVERAGE_VARIABLES, var)

    def update(self, after=(), step_offset=0):
        """One op that updates every average, after the ops in `after`.

        The update belongs to the global step it reads plus `step_offset`: 1 when
        it runs before the op that increments the global step.
        """
        with self._scope("update"):
            with tf.control_dependencies(list(after)):
                step = read_step(self.global_step)
                if step_offset:
                    step += step_offset
                due = self._due(step)
                if due is None:
                    return self._apply(step)
                if not self._gate_in_graph():
                    return tf.group(tf.cond(due, lambda: self._apply_then_true(step), _false))
                return self._apply(step, gate=due)

    @contextlib.contextmanager
    def _scope(self, what):
        """The name scope `<name>_<what>` of ops this averager builds, recorded
        so that graph walks tell them from the training step's."""
        with tf.name_scope("%s_%s" % (self.options.name, what)) as scope:
            self.global_step.graph.add_to_collection(AVERAGING_SCOPES, scope)
            yield scope

    def average_rows_lazily(self, ran):
        """Chooses, per variable, to average rows lazily (see `_rows`) where every
        op among `ran` (the ops a training step runs) that writes the variable
        is a sparse row write that the global-step increment waits for; builds
        each one's `<average>/last_step` and orders a catch-up of the written
        rows before those writes. Logs the choice once. Call it before `update`."""
        found = {}
        for i, var in enumerate(self.variables):
            writes = _rows.row_writes(var, ran) if var.shape.ndims else None
            if (writes and var.shape[0] is not None
                    and _rows.written_before_the_step(writes[0], self.global_step, ran)):
                found[i] = writes
        if not found:
            return
        names = [self.variables[i].op.name for i in sorted(found)]
        refusal = self._lazy_refusal()
        if refusal:
            logger.info("%s: %s written only in rows, averaged densely: %s.",
                        self.options.name, names, refusal)
            return
        with self._scope("rows"):
            step = read_step(self.global_step)
            for i, (writes, indices) in sorted(found.items()):
                var, avg = self.variables[i], self.averages[i]
                last = create_shadow(avg, _rows.LAST_STEP,
                                     tf.zeros([var.shape[0]], tf.int64))
                lazy = _rows.LazyRows(var, avg, last, writes, indices)
                catch_up = self._catch_up(lazy, lazy.rows, step)
                for op in writes:
                    op._add_control_input(catch_up)
                self._lazy[i] = lazy
        logger.info("%s: %s written only in rows, averaged lazily: each row's average is "
                    "brought up to date when the row is written and before each "
                    "checkpoint.", self.options.name, names)

    def _lazy_refusal(self):
        """Why no variable can be averaged lazily, or None."""
        return "stochastic weight averages are dense"

    def flush(self):
        """An op that brings every row of every lazy average up to date, for a
        checkpoint to hold exact averages; None if no average is lazy."""
        if not self._lazy:
            return None
        with self._scope("flush"):
            step = read_step(self.global_step)
            return tf.group(*[self._catch_up(lazy, None, step)
                              for lazy in self._lazy.values()])

    def _catch_up(self, lazy, rows, upto, gate=None):
        raise NotImplementedError

    def _average_value(self, i):
        """The value of average `i` as a tensor (exact for lazy rows too)."""
        return _read(self.averages[i])

    def _gate_in_graph(self):
        """Whether a due-gated update selects values (`tf.where`) rather than
        branching (`tf.cond`): TF 2's `tf.cond` cannot assign a reference variable."""
        return not IS_TF1 and any(not hasattr(v, "handle") for v in self._state())

    def _state(self):
        """Every variable the update writes."""
        return list(self.averages)

    def _due(self, step):
        """None to update after every step, or a bool tensor: update after `step`?"""
        return None

    def period(self):
        """`k` such that only the update after a global step divisible by `k`
        can change anything (1: any update can); the hook uses it to leave the
        other steps' runs alone."""
        return 1

    def _apply_then_true(self, step):
        with tf.control_dependencies([self._apply(step)]):
            return tf.constant(True)

    def _apply(self, step, gate=None):
        """The op that updates every average after global step `step` (a tensor);
        with a bool tensor `gate`, an op that changes nothing unless it is true."""
        raise NotImplementedError

    def initialize_from_weights(self):
        """An op that sets every average to its weight's current value.

        The decorator runs it when a session starts from scratch, after any
        warm start has loaded the weights.
        """
        return tf.group(*[tf.assign(a, _read(v)) for v, a in zip(self.variables, self.averages)])

    def distance(self):
        """Global L2 distance between the averages and the weights, and its ratio
        to the weights' global norm."""
        squares = [tf.reduce_sum(tf.square(tf.cast(self._average_value(i) - _read(v),
                                                   tf.float32)))
                   for i, v in enumerate(self.variables)]
        norms = [tf.reduce_sum(tf.square(tf.cast(_read(v), tf.float32)))
                 for v in self.variables]
        distance = tf.sqrt(tf.add_n(squares))
        return distance, distance / (tf.sqrt(tf.add_n(norms)) + 1e-12)

    def add_summaries(self):
        """TensorBoard scalars `<name>/<tag>`, see `_summaries`."""
        with tf.name_scope(None):
            for tag, value in self._summaries():
                tf.summary.scalar(self.options.name + "/" + tag, value)

    def _summaries(self):
        """`[(tag, scalar tensor)]`: the averages' distance to the weights."""
        distance, relative = self.distance()
        return [("distance", distance), ("relative_distance", relative)]


class ExponentialMovingAverager(_Averager):
    """Shadow variables and update ops of an exponential moving average.

    The update after a step is, for each selected weight `w` and its average `a`,

        a <- a - (1 - d) * (a - w)        (= d * a + (1 - d) * w)

    with `d` the decay in effect (see `EmaOptions`). Shadows start from the
    weights' initial values, which a warm start has already replaced when the
    averager is built after it.
    """

    KIND = "Exponential moving averages"

    def __init__(self, options, graph=None):
        super(ExponentialMovingAverager, self).__init__(options, graph)
        self._debias = []
        if options.zero_debias:
            biased, local_step = DEBIAS_HELPERS
            for avg in self.averages:
                self._debias.append((
                    create_shadow(avg, biased, tf.zeros_like(avg.initial_value)),
                    create_shadow(avg, local_step, tf.constant(0.0))))

    def decay(self, step):
        """The decay in effect for an update after global step `step` (a tensor)."""
        decay = tf.constant(self.options.decay, tf.float32)
        if self.options.num_updates:
            n = tf.cast(step, tf.float32)
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        if self.options.every_n_steps > 1:
            decay = tf.pow(decay, float(self.options.every_n_steps))
        return decay

    def _due(self, step):
        due = []
        if self.options.every_n_steps > 1:
            due.append(tf.equal(step % self.options.every_n_steps, 0))
        if self.options.skip_nonfinite:
            due.extend(tf.reduce_all(tf.math.is_finite(_read(v))) for v in self.variables)
        return tf.reduce_all(tf.stack(due)) if due else None

    def period(self):
        return self.options.every_n_steps

    def _state(self):
        return (list(self.averages) + [h for pair in self._debias for h in pair]
                + [lazy.last for lazy in self._lazy.values()])

    def _lazy_refusal(self):
        options = [o for o in ("zero_debias", "skip_nonfinite") if getattr(self.options, o)]
        if not self.options.lazy_rows:
            return "lazy_rows=False"
        if options:
            return "lazy rows do not combine with %s=True" % " or ".join(options)
        return None

    def _caught_up(self, lazy, rows, upto):
        """(old average rows, their value brought up to global step `upto`, old
        `last` rows, new `last` rows) of `rows` (None: all rows) of `lazy`."""
        if rows is None:
            old, value, old_last = _read(lazy.average), _read(lazy.variable), _read(lazy.last)
        else:
            old = tf.gather(lazy.average, rows)
            value = tf.gather(lazy.variable, rows)
            old_last = tf.gather(lazy.last, rows)
        upto = tf.cast(upto, tf.int64)
        log_d = _rows.log_decay_product(old_last, upto, self.options.decay,
                                        self.options.num_updates, self.options.every_n_steps)
        d = tf.reshape(tf.cast(tf.exp(log_d), old.dtype), [-1] + [1] * (old.shape.ndims - 1))
        return old, value + d * (old - value), old_last, tf.fill(tf.shape(old_last), upto)

    def _catch_up(self, lazy, rows, upto, gate=None):
        old, new, old_last, new_last = self._caught_up(lazy, rows, upto)
        if gate is not None:
            new, new_last = tf.where_v2(gate, new, old), tf.where_v2(gate, new_last, old_last)
        # `new_last` need not read `last` (its shape may be known): the writes
        # wait for `new`, which read it.
        with tf.control_dependencies([new]):
            if rows is None:
                return tf.group(tf.assign(lazy.average, new), tf.assign(lazy.last, new_last))
            return tf.group(tf.scatter_update(lazy.average, rows, new),
                            tf.scatter_update(lazy.last, rows, new_last))

    def _update_rows(self, lazy, step, one_minus, gate):
        """The update after global step `step` of the rows the step wrote, whose
        averages the catch-up before the writes brought up to the step before:
        `a <- a - (1 - d) * (a - w)` on those rows, and their `last` set to `step`."""
        if gate is not None:
            return self._catch_up(lazy, lazy.rows, step, gate)
        rows = lazy.rows
        delta = (tf.gather(lazy.average, rows) - tf.gather(lazy.variable, rows)) * one_minus
        last = tf.fill(tf.shape(rows), tf.cast(step, tf.int64))
        return tf.group(tf.scatter_sub(lazy.average, rows, delta),
                        tf.scatter_update(lazy.last, rows, last))

    def _average_value(self, i):
        if i not in self._lazy:
            return super(ExponentialMovingAverager, self)._average_value(i)
        return self._caught_up(self._lazy[i], None, read_step(self.global_step))[1]

    def _apply(self, step, gate=None):
        decay = self.decay(step)
        one_minus_by_dtype = {}
        updates = []
        for i, (var, avg) in enumerate(zip(self.variables, self.averages)):
            dtype = avg.dtype.base_dtype
            if dtype not in one_minus_by_dtype:
                one_minus = tf.cast(1.0 - decay, dtype)
                one_minus_by_dtype[dtype] = (one_minus, -one_minus)
            one_minus, minus_one_minus = one_minus_by_dtype[dtype]
            if i in self._lazy:
                updates.append(self._update_rows(self._lazy[i], step, one_minus, gate))
                continue
            value = _read(var)
            if not self._debias:
                if gate is None:
                    updates.append(_move_toward(avg, value, one_minus, minus_one_minus))
                else:
                    old = _read(avg)
                    updates.append(_gated_assign(avg, gate, old - (old - value) * one_minus))
                continue
            biased, local_step = self._debias[i]
            if gate is None:  # one kernel each: parameter servers may run several at once
                new_biased = tf.assign_sub(biased, (_read(biased) - value) * one_minus)
                new_step = tf.assign_add(local_step, 1.0)
            else:
                old_biased = _read(biased)
                new_biased = _gated_assign(biased, gate,
                                           old_biased - (old_biased - value) * one_minus)
                new_step = _gated_assign(local_step, gate, _read(local_step) + 1.0)
            factor = tf.cast(1.0 - tf.pow(decay, new_step), dtype)
            updates.append(_gated_assign(avg, gate, new_biased / factor))
        return tf.group(*updates)

    def _summaries(self):
        """The decay in effect, then the averages' distance to the weights."""
        return ([("decay", self.decay(self.global_step))]
                + super(ExponentialMovingAverager, self)._summaries())


class StochasticWeightAverager(_Averager):
    """Shadow variables and update ops of a stochastic weight average (SWA).

    The weights after global step `s` enter the mean iff `s >= start_step` and
    `(s - start_step) % average_period == 0`. An entry of weight `w` into its
    average `a` is

        count <- count + 1
        a <- a + (w - a) / count          (a <- w exactly when count is 1)

    so `a` is the plain mean of the weights that entered. Until the first entry
    the averages mirror the weights (`a <- w` after every step), so evaluating
    the averages before `start_step` evaluates the current weights. Global
    step 0 stands for the weights training starts from: with `start_step=0`
    they are the first entry.

    `count` is the int64 variable `<name>/count` (`StochasticWeightAverage/count`
    by default), saved in checkpoints, so a resumed run continues the same mean.
    """

    KIND = "Stochastic weight averages"

    def __init__(self, options, graph=None):
        super(StochasticWeightAverager, self).__init__(options, graph)
        self.count = _create_count(options.name, self._initial_count(), self.global_step)

    def _initial_count(self):
        """Entries before the first step: the starting weights, if step 0 counts."""
        return 1 if self.options.start_step == 0 else 0

    def is_entry(self, step):
        """Whether the weights after global step `step` (a tensor) enter the mean."""
        start, period = self.options.start_step, self.options.average_period
        entry = tf.greater_equal(step, start)
        if period > 1:
            entry = tf.logical_and(entry, tf.equal((step - start) % period, 0))
        return entry

    def _due(self, step):
        return tf.logical_or(self.is_entry(step), tf.equal(_read(self.count), 0))

    def _apply(self, step, gate=None):
        entry = self.is_entry(step)
        if gate is not None:
            entry = tf.logical_and(entry, gate)
        entered = self.count.assign_add(tf.cast(entry, tf.int64), read_value=False)
        with tf.control_dependencies([entered]):
            count = _read(self.count)
        first = tf.less_equal(count, 1)
        count_by_dtype = {}
        updates = []
        for var, avg in zip(self.variables, self.averages):
            value = _read(var)
            dtype = avg.dtype.base_dtype
            if dtype not in count_by_dtype:
                count_by_dtype[dtype] = tf.cast(tf.maximum(count, 1), dtype)
            old = _read(avg)
            mean = old + (value - old) / count_by_dtype[dtype]
            updates.append(_gated_assign(avg, gate, tf.where_v2(first, value, mean)))
        return tf.group(*updates)

    def initialize_from_weights(self):
        """An op that sets every average to its weight and resets the count.

        A warm start that loaded `<name>/count` from another run leaves no trace.
        """
        weights = super(StochasticWeightAverager, self).initialize_from_weights()
        return tf.group(weights, self.count.assign(self._initial_count(), read_value=False))

    def _summaries(self):
        """The number of entries (`<name>/num_entries`: a `<name>/count` tag would
        clash with the variable's op name), then the distance to the weights."""
        return ([("num_entries", tf.cast(_read(self.count), tf.float32))]
                + super(StochasticWeightAverager, self)._summaries())


def _create_count(name, initial_value, global_step):
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


def _move_toward(avg, value, fraction, minus_fraction):
    """The op `avg <- avg - fraction * (avg - value)` (`minus_fraction` is
    `-fraction`, computed once for all variables).

    A reference variable (TF 1) is updated in place by two kernels and no
    temporary, `avg <- avg - fraction * avg`, then `avg <- avg + fraction * value`.
    A resource variable's read holds its buffer, so an in-place kernel reading it
    would copy it: there the difference is the one temporary, and one kernel
    applies it, `avg <- avg - fraction * (avg - value)`.
    """
    if hasattr(avg, "handle"):
        return tf.raw_ops.ResourceApplyGradientDescent(
            var=avg.handle, alpha=fraction, delta=_read(avg) - value)
    scaled = tf.raw_ops.ApplyGradientDescent(var=avg, alpha=fraction, delta=_read(avg))
    with tf.control_dependencies([scaled]):
        return tf.raw_ops.ApplyGradientDescent(var=avg, alpha=minus_fraction, delta=value).op


def _gated_assign(var, gate, value):
    """`var <- value`, or, with a bool tensor `gate`, `var <- gate ? value : var`;
    returns the value assigned."""
    if gate is not None:
        value = tf.where_v2(gate, value, _read(var))
    return tf.assign(var, value)


def _false():
    return tf.constant(False)
