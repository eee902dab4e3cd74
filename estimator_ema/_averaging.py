"""Builds the update ops of the averages; hooks and decorators share it.

`Averager` holds what every averager shares (the selection, a shadow per
variable, the gated update, lazy rows); `_ema.ExponentialMovingAverager` the
exponential moving average; `_swa.StochasticWeightAverager` the SWA.
"""

import contextlib
import logging
import weakref

from estimator_ema import _rows
from estimator_ema._compat import tf
from estimator_ema._gating import gated
from estimator_ema._graphs import AVERAGING_SCOPES, adds_one, completions, saved_keys, writers
from estimator_ema._ordering import Order
from estimator_ema._variables import create_shadow, read, read_fresh
from estimator_ema.checkpoints import checkpoint_key

logger = logging.getLogger("estimator_ema")

_AVERAGERS = weakref.WeakKeyDictionary()
"""`{graph: [weak references to the averagers built in it]}`, for `averagers`:
neither a graph nor an averager (which refers to its graph) is kept alive."""


def averagers(graph):
    """The averagers built in `graph` that are still in use, in the order they
    were built."""
    return [a for a in (ref() for ref in _AVERAGERS.get(graph, ())) if a is not None]


class Averager(object):
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
        self._averages = None  # made on first use, see `averages`
        self._rows = None  # _rows.LazyRows, if some variable is averaged lazily
        self._lazy = {}  # {index of a variable: its _rows._Lazy}
        # With lazy rows: (the global step after a training step, read before
        # its writes, and whether its update is due), and the step's ops.
        self._then = self._ran = None
        listed = set(id(v) for v in graph.get_collection(tf.GraphKeys.MOVING_AVERAGE_VARIABLES))
        for var in self.variables:
            if id(var) not in listed:
                graph.add_to_collection(tf.GraphKeys.MOVING_AVERAGE_VARIABLES, var)
        _AVERAGERS.setdefault(graph, []).append(weakref.ref(self))

    @property
    def averages(self):
        """The average variable of each variable, `<variable>/<name>`: a lazily
        averaged one's holds its rows' state (see `_rows._Lazy`). Made on first
        use, which is after `average_rows_lazily` if it is called."""
        if self._averages is None:
            self._averages = [
                self._lazy[i].average if i in self._lazy
                else create_shadow(v, self.options.name, v.initial_value)
                for i, v in enumerate(self.variables)]
        return self._averages

    def update(self, after=(), step_offset=0, join=None):
        """One op that updates every average, after the ops in `after`.

        The update belongs to the global step it reads plus `step_offset`: 1 when
        it runs before the op that increments the global step. With lazy rows
        the step and whether the update is due were read before the step's
        writes (see `average_rows_lazily`), so each average's update need only
        follow the writes of its own variable, on a parameter server where they
        run (see `_ordering.Order`); the op returned still follows `join` (default
        `after`: a run that fetches it beside those ops need not). None if
        `join` is empty and every average's update was woven into the step
        (a run of `after` updates them all).
        """
        with self._scope("update"):
            ready = completions(after)
            if not self.step_read_early:
                with tf.control_dependencies(ready):
                    with self._beside_step():
                        step = read_fresh(self.global_step)
                        if step_offset:
                            step += step_offset
                        due = self._due(step)
                    return self._gated_apply(step, due, Order(self, ()))
            step, due = self._then
            joined = ready if join is None else completions(join)
            # A periodic update's gate is one op: it is not woven.
            order = Order(self, ready, joined, weaving=due is None)
            update = self._gated_apply(step, due, order)
            if update is None:  # every average's update woven into the step
                return tf.group(*joined) if joined else None
            with tf.control_dependencies(joined):
                return tf.group(update)

    @property
    def step_read_early(self):
        """Whether the update takes the global step read before the training
        step's writes (lazy rows: see `average_rows_lazily`), so that it need
        not follow the op that increments it."""
        return self._then is not None

    def followed(self):
        """The variables whose writes in a training step the update follows: the
        averaged ones not averaged lazily (a lazy one's written rows are folded
        before the writes), and the global step unless it was read early."""
        dense = [v for i, v in enumerate(self.variables) if i not in self._lazy]
        return dense if self.step_read_early else dense + [self.global_step]

    def _gated_apply(self, step, due, order):
        if due is None:
            return self._apply(step, order)
        return gated(due, lambda: self._apply(step, order) or tf.no_op(), self._state())

    def _beside_step(self):
        """Ops built in this context run where the global step lives (its
        parameter server): the step's value and what is computed from it
        (scalars) go from there to each average's device, with no round trip
        through the task's own device."""
        return tf.colocate_with(self.global_step)

    @contextlib.contextmanager
    def _scope(self, what):
        """The name scope `<name>_<what>` of ops this averager builds, recorded
        so that graph walks tell them from the training step's."""
        with tf.name_scope("%s_%s" % (self.options.name, what)) as scope:
            self.global_step.graph.add_to_collection(AVERAGING_SCOPES, scope)
            yield scope

    def average_rows_lazily(self, ran, refusal=None):
        """Chooses, per variable, to average rows lazily (see `_rows`) where every
        op among `ran` (the ops a training step runs, the update's included)
        that writes the variable is a sparse row write that the global-step
        increment waits for, and orders what lazy rows need before those
        writes; with a `refusal` (a reason), or one of `_lazy_refusal`, none is.
        Logs the choice once. Call it before `update`, and before anything uses
        `averages`."""
        before_step = _rows.before_the_step(self.global_step, ran)
        found = {}
        for i, var in enumerate(self.variables):
            writes = _rows.row_writes(var, ran) if var.shape.ndims else None
            if (writes and var.shape[0] is not None and before_step is not None
                    and set(writes[0]) <= before_step):
                found[i] = writes
        if not found:
            return
        refusal = refusal or self._lazy_refusal()
        if not refusal and not adds_one(ran, self.global_step):
            refusal = "the training step does not add exactly one to the global step"
        dense = {}
        for i in sorted(found):
            reason = refusal or _rows.unsupported(self.variables[i])
            if reason:
                dense.setdefault(reason, []).append(self.variables[i].op.name)
                del found[i]
        for reason, names in sorted(dense.items()):
            logger.info("%s: %s written only in rows, averaged densely: %s.",
                        self.options.name, names, reason)
        if not found:
            return
        assert self._averages is None, "lazy rows are chosen before the averages are made"
        self._ran = ran
        with self._scope("rows"):
            self._rows = self._average_lazily([(self.variables[i],) + found[i]
                                               for i in sorted(found)])
        self._lazy = {i: lazy for i, lazy in zip(sorted(found), self._rows.lazy)}
        logger.info("%s: %s written only in rows, averaged lazily: each step updates the "
                    "averages of the rows it writes, beside them; checkpoints hold every "
                    "row's average brought up to date.", self.options.name,
                    [self.variables[i].op.name for i in sorted(found)])

    def _lazy_refusal(self):
        """Why no variable can be averaged lazily, or None."""
        return "stochastic weight averages are dense"

    def lazy_writes_missed(self, ran):
        """The ops among `ran` that write a lazily averaged variable but are not
        the writes its lazy rows were built for."""
        return sorted((op for lazy in self._lazy.values()
                       for op in writers([lazy.variable], ran) if op not in lazy.writes),
                      key=lambda op: op.name)

    def saveables(self, state):
        """What a Saver saves of the variables `state` (the averager's): each lazy
        average (its rows' state) and its clock replaced by one saveable of its plain
        values (see `_rows.LazyRows.saveables`)."""
        if self._rows is None:
            return list(state)
        lazy = {id(v) for v in self._rows.state()}
        with self._scope("save"):
            return [v for v in state if id(v) not in lazy] + self._rows.saveables()

    def values(self):
        """`{variable op name: tensor}` of the averages as they are now, a lazy
        average's rows brought up to date (see `_rows._Lazy.value`)."""
        with self._scope("read"):
            return {var.op.name: self._lazy[i].value() if i in self._lazy else read(average)
                    for i, (var, average) in enumerate(zip(self.variables, self.averages))}

    def warn_of_savers(self):
        """Logs a warning for each Saver other than the graph's default one that
        saves every averaged variable but none of the averages (one built
        before the averaging): its checkpoints would hold no averages. (It may
        be meant only to restore: a warning, not an error.)"""
        weights = {checkpoint_key(v) for v in self.variables}
        averages = {checkpoint_key(a) for a in self.averages}
        for scope, keys in sorted(saved_keys(self.global_step.graph).items()):
            if weights and weights <= keys and not keys & averages:
                logger.warning(
                    "%s: a Saver other than the graph's default one ('%s') saves every "
                    "averaged variable but none of the averages: it was built before the "
                    "averaging (a tf.compat.v1.train.Saver() in the model_fn?), so checkpoints "
                    "it saves hold no averages, and training resumed from one starts them "
                    "again from the weights. To save, give tf.compat.v1.train."
                    "CheckpointSaverHook no saver (it then uses the graph's default Saver, "
                    "which saves the averages) or build the Saver once training's hooks have "
                    "begun.", self.options.name, scope)

    def check_savers(self):
        """Raises RuntimeError if a Saver other than the graph's default one saves a
        lazy average as it is kept (see `_rows.LazyRows.raw_saves`)."""
        saves = self._rows.raw_saves() if self._rows is not None else []
        if saves:
            raise RuntimeError(
                "%s: a Saver other than the graph's default one saves the lazily averaged "
                "tables' averages as they are kept, not brought up to date (its save ops: "
                "%s); its checkpoints would not hold the averages. Save with the graph's "
                "default Saver, which Estimator's checkpoints use (built, the averaging "
                "installed, once training's hooks have begun: "
                "tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVERS)[0]), or pass "
                "lazy_rows=False." % (self.options.name, ", ".join(saves)))

    def _average_lazily(self, found):
        """The `_rows.LazyRows` of `found`, `[(variable, writes, indices)]`."""
        raise NotImplementedError

    def _state(self):
        """Every variable the update writes but the SWA count (which `_due` reads
        before the gate)."""
        return list(self.averages)

    def _due(self, step):
        """None to update after every step, or a bool tensor: update after `step`?"""
        return None

    def period(self):
        """`k` such that only the update after a global step divisible by `k`
        can change anything (1: any update can, as with lazy rows, whose
        update runs every step); the hook uses it to leave the other steps'
        runs alone."""
        return 1

    def _apply(self, step, order):
        """The op that updates every average after global step `step` (a tensor),
        each average's update placed by `order` (an `_ordering.Order`); None if every
        one was woven into the step."""
        raise NotImplementedError

    def initialize_from_weights(self):
        """An op that sets every average to its weight's current value.

        The decorator runs it when a session starts from scratch, after any
        warm start has loaded the weights.
        """
        return tf.group(*[self._lazy[i].start() if i in self._lazy else tf.assign(a, read(v))
                          for i, (v, a) in enumerate(zip(self.variables, self.averages))])

    def distance(self):
        """Global L2 distance between the averages and the weights, and its ratio
        to the weights' global norm, over the variables not averaged lazily
        (reading a lazy one's every row would cost what lazy rows save; 0 if
        every variable is)."""
        dense = [(v, a) for i, (v, a) in enumerate(zip(self.variables, self.averages))
                 if i not in self._lazy]
        if not dense:
            return tf.constant(0.0), tf.constant(0.0)
        squares = [tf.reduce_sum(tf.square(tf.cast(read(a) - read(v), tf.float32)))
                   for v, a in dense]
        norms = [tf.reduce_sum(tf.square(tf.cast(read(v), tf.float32))) for v, _ in dense]
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
