"""Builds the update ops of the averages; hooks and decorators share it.

`Averager` holds what every averager shares (the selection, a shadow per
variable, the gated update, lazy rows); `ExponentialMovingAverager` the
exponential moving average; `_swa.StochasticWeightAverager` the SWA.
"""

import contextlib
import logging
import weakref

from estimator_ema import _rows
from estimator_ema._compat import tf
from estimator_ema._graphs import (AVERAGING_SCOPES, adds_one, ancestors, completions,
                                   is_averaging_op, saved_keys, writers)
from estimator_ema._options import DEBIAS_HELPERS
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
        self.averages = [create_shadow(v, options.name, v.initial_value)
                         for v in self.variables]
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

    def update(self, after=(), step_offset=0, join=None):
        """One op that updates every average, after the ops in `after`.

        The update belongs to the global step it reads plus `step_offset`: 1 when
        it runs before the op that increments the global step. With lazy rows
        the step and whether the update is due were read before the step's
        writes (see `average_rows_lazily`), so each average's update need only
        follow the writes of its own variable, on a parameter server where they
        run (see `_Order`); the op returned still follows `join` (default
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
                    return self._gated_apply(step, due, _Order(self, ()))
            step, due = self._then
            joined = ready if join is None else completions(join)
            # A periodic update's gate is one op: it is not woven.
            order = _Order(self, ready, joined, weaving=due is None)
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
        return _gated(due, lambda: self._apply(step, order) or tf.no_op(), self._state())

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
        Logs the choice once. Call it before `update`."""
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
            reason = refusal or _rows.unsupported(self.variables[i], self.averages[i])
            if reason:
                dense.setdefault(reason, []).append(self.variables[i].op.name)
                del found[i]
        for reason, names in sorted(dense.items()):
            logger.info("%s: %s written only in rows, averaged densely: %s.",
                        self.options.name, names, reason)
        if not found:
            return
        self._ran = ran
        with self._scope("rows"):
            self._rows = self._average_lazily([(self.variables[i], self.averages[i]) + found[i]
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
        average, its row clock and clock replaced by one saveable of its plain
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
        """The `_rows.LazyRows` of `found`, `[(variable, average, writes, indices)]`."""
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
        each average's update placed by `order` (an `_Order`); None if every
        one was woven into the step."""
        raise NotImplementedError

    def initialize_from_weights(self):
        """An op that sets every average to its weight's current value.

        The decorator runs it when a session starts from scratch, after any
        warm start has loaded the weights.
        """
        assigned = [tf.assign(a, read(v)) for v, a in zip(self.variables, self.averages)]
        if self._rows is not None:
            with tf.control_dependencies(assigned):
                assigned.append(self._rows.start())
        return tf.group(*assigned)

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


class ExponentialMovingAverager(Averager):
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
        self._decay = None  # (the step tensor, its decay) last built
        self._log_decay = None  # with lazy rows, the step's `_rows.log_decay`
        self._debias = []
        if options.zero_debias:
            biased, local_step = DEBIAS_HELPERS
            for avg in self.averages:
                self._debias.append((
                    create_shadow(avg, biased, tf.zeros_like(avg.initial_value)),
                    create_shadow(avg, local_step, tf.constant(0.0))))

    def decay(self, step):
        """The decay in effect for an update after global step `step` (a tensor)."""
        if self._decay is not None and self._decay[0] is step:
            return self._decay[1]
        decay = tf.constant(self.options.decay, tf.float32)
        if self.options.num_updates:
            n = tf.cast(step, tf.float32)
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        if self.options.every_n_steps > 1:
            decay = tf.pow(decay, float(self.options.every_n_steps))
        self._decay = step, decay
        return decay

    def _due(self, step):
        due = []
        if self.options.every_n_steps > 1:
            due.append(tf.equal(step % self.options.every_n_steps, 0))
        if self.options.skip_nonfinite:
            due.extend(tf.reduce_all(tf.math.is_finite(read(v))) for v in self.variables)
        if len(due) > 1:
            return tf.reduce_all(tf.stack(due))
        return due[0] if due else None

    def period(self):
        return 1 if self._rows is not None else self.options.every_n_steps

    def _state(self):
        return list(self.averages) + [h for pair in self._debias for h in pair]

    def _lazy_refusal(self):
        options = [o for o in ("zero_debias", "skip_nonfinite") if getattr(self.options, o)]
        if not self.options.lazy_rows:
            return "lazy_rows=False"
        if options:
            return "lazy rows do not combine with %s=True" % " or ".join(options)
        return None

    def _average_lazily(self, found):
        # The writes come before the global step's increment (of one): the
        # update after them belongs to the step read now, plus one.
        with self._beside_step():
            step = read_fresh(self.global_step) + 1
            self._then = step, self._due(step)
            decay = self.decay(step)
            if self._then[1] is not None:  # an update not due moves nothing
                decay = tf.where_v2(self._then[1], decay, tf.ones_like(decay))
            self._log_decay = _rows.log_decay(decay)
        return _rows.LazyRows(found, self._log_decay)

    def _apply(self, step, order):
        with self._beside_step():
            decay = self.decay(step)
        # Only the decay goes to each device that holds averages (once: one
        # transfer serves every op there); what is computed from it is computed
        # there, once per device and dtype. Beside lazy rows the lazy clocks'
        # `log(decay)` goes instead, in float64: `1 - decay` from it rounds to
        # stock's float32 `1 - decay`.
        def one_minus(dtype):
            if self._log_decay is not None:
                return tf.cast(-tf.math.expm1(self._log_decay), dtype)
            return tf.cast(1.0 - decay, dtype)

        one_minus_by_place = {}
        updates = []
        for i, (var, avg) in enumerate(zip(self.variables, self.averages)):
            if i in self._lazy:
                continue
            with avg.graph.colocate_with(avg):  # on the average's device
                place = avg.device, avg.dtype.base_dtype
                if place not in one_minus_by_place:
                    one_minus_by_place[place] = one_minus(place[1])
                with tf.control_dependencies(order.follows(i)):
                    update = self._apply_one(i, var, avg, decay, one_minus_by_place[place])
                if not order.weave(i, update):
                    updates.append(update)
        return tf.group(*updates) if updates or not self._lazy else None

    def _apply_one(self, i, var, avg, decay, one_minus):
        """The update of the `i`-th average, `avg` of `var` (see `_apply`)."""
        dtype = avg.dtype.base_dtype
        value = read(var)
        if not self._debias:
            return _move_toward(avg, value, one_minus)
        biased, local_step = self._debias[i]
        # One kernel each: parameter servers may run several at once.
        new_biased = tf.assign_sub(biased, (read(biased) - value) * one_minus)
        new_step = tf.assign_add(local_step, 1.0)
        factor = tf.cast(1.0 - tf.pow(decay, new_step), dtype)
        return tf.assign(avg, new_biased / factor)

    def _summaries(self):
        """The decay in effect, then the averages' distance to the weights."""
        return ([("decay", self.decay(self.global_step))]
                + super(ExponentialMovingAverager, self)._summaries())


class _Order(object):
    """Where each average's update goes in a training step: what it waits for,
    and with lazy rows the group op it may be woven into.

    Without lazy rows the update is built where it waits for the whole step
    (`ready` is then ()). With lazy rows the step and its decay were read
    before the step's writes, so the update of an average need only follow
    the writes of its own variable, where `ready` runs every write of it that
    the training step does (not so with `SyncReplicasOptimizer`, whose chief
    applies in another run) and each is outside control flow (an op that waits
    for one in a `tf.cond` branch not taken does not run); otherwise it follows
    `ready`. And where an average lives on another device than every one of
    the `joined` ops (which the op the update returns waits for; none where
    the caller fetches nothing but `ready`), its update is woven into a group
    op (`NoOp`) on its device among the step's ops that follows every write
    of its variable (the optimizer's group of the applies on a parameter
    server): no control edge then crosses to the joined ops' device for it,
    and no fetch is needed for it. `weaving` False weaves nothing.
    """

    def __init__(self, averager, ready, joined=(), weaving=True):
        self._averager, self._ready = averager, ready
        self._within = ancestors(ready) if averager.step_read_early else None
        self._hosts = []
        if self._within is not None and weaving:
            devices = {op.device for op in joined}
            self._hosts = sorted((op for op in self._within if op.type == "NoOp"
                                  and op._get_control_flow_context() is None
                                  and not is_averaging_op(op)
                                  and op.device not in devices), key=lambda op: op.name)
        self._before = {}  # {host: its ancestors}
        self._written = {}  # {i: _writes(i)}

    def _writes(self, i):
        """The writes the `i`-th average's update follows, or None for `ready`."""
        if i not in self._written:
            self._written[i] = self._find_writes(i)
        return self._written[i]

    def _find_writes(self, i):
        if self._within is None:
            return None
        ops = writers([self._averager.variables[i]], self._averager._ran)
        if any(op not in self._within or op._get_control_flow_context() is not None
               for op in ops):
            return None
        return ops

    def follows(self, i):
        """What the update of the `i`-th average waits for."""
        writes = self._writes(i)
        if writes is None:
            return self._ready
        return completions(sorted(writes, key=lambda op: op.name))

    def weave(self, i, update):
        """Whether `update`, of the `i`-th average, was woven into a host op (a
        control input of it): the first by name on its device that follows
        every write its update follows. (The update waits for nothing else
        that a host could follow: the step and decay it takes were read before
        the writes.)"""
        writes = self._writes(i)
        device = self._averager.averages[i].device
        for host in self._hosts if writes is not None else ():
            if host.device != device:
                continue
            if host not in self._before:
                self._before[host] = ancestors(host)
            if writes <= self._before[host]:
                host._add_control_input(update)
                return True
        return False


def _move_toward(avg, value, fraction):
    """The op `avg <- avg - fraction * (avg - value)`, stock's arithmetic: the
    difference is the one temporary, and one in-place kernel applies it.

    Scaling the average in place first (`avg <- avg - fraction * avg`, then
    `avg <- avg + fraction * value`, no temporary) rounds twice at the
    average's magnitude and drifts from the exact average as steps go by.
    """
    delta = read(avg) - value
    if hasattr(avg, "handle"):
        return tf.raw_ops.ResourceApplyGradientDescent(var=avg.handle, alpha=fraction,
                                                       delta=delta)
    return tf.raw_ops.ApplyGradientDescent(var=avg, alpha=fraction, delta=delta).op


def _gated(due, build, variables=()):
    """The op `build()` makes, run only where the bool scalar `due` is true,
    within an op that completes either way.

    One `Switch` of `due` gates it: every op `build` makes waits for an
    identity of the switch's true output (a control edge from the switch
    itself is never dead), so where `due` is false none of them runs (an op
    with a dead input is skipped, in TF 1 and TF 2 graphs alike, reference
    variables' assignments included), and a `Merge` ends it live. (`tf.cond`
    would switch every tensor its branch reads from outside: an op per
    weight and per average, run on every step.) Those ops reach `variables`
    (the averages, which nothing else a training step runs reads) through
    copies of their variable nodes built behind the gate, so that no node
    per variable runs where `due` is false either.
    """
    skipped, taken = tf.raw_ops.Switch(data=due, pred=due)
    pivot = tf.identity(taken)
    start = len(pivot.graph.get_operations())
    with tf.control_dependencies([pivot]):
        op = build()
        _read_behind_the_gate(pivot.graph.get_operations()[start:], variables)
    with tf.control_dependencies([op]):
        done = tf.identity(pivot)
    return tf.raw_ops.Merge(inputs=[skipped, done])[0].op


def _read_behind_the_gate(built, variables):
    """Rewires the ops `built` to read each of `variables` through a copy of its
    variable node (`VarHandleOp` or `VariableV2`: the same container, shared
    name and device, so the same variable) made in the current control
    context. A variable whose node is neither, or a resource variable with no
    shared name (its name at run time is the empty one), is read as it is."""
    nodes = {v.op for v in variables if isinstance(v.op, tf.Operation)
             and (v.op.type == "VariableV2"
                  or (v.op.type == "VarHandleOp" and v.op.get_attr("shared_name")))}
    copies = {}
    for op in built:
        for index, tensor in enumerate(op.inputs):
            node = tensor.op
            if node not in nodes:
                continue
            if node not in copies:
                copies[node] = _variable_node_copy(node)
            op._update_input(index, copies[node])


def _variable_node_copy(node):
    """A new node of `node`'s variable, beside it. A reference variable with no
    shared name (named at run time by its node) is given its node's name as
    its shared name, so that the two stay one variable when the graph is
    imported under a prefix."""
    if not node.get_attr("shared_name"):
        node._set_attr("shared_name", tf.AttrValue(s=node.name.encode()))
    attrs = {name: node.get_attr(name) for name in ("dtype", "shape", "container",
                                                     "shared_name")}
    graph = node.graph
    # Neither a container scope nor a colocation of the caller's may move it.
    with graph.container(""), graph.colocate_with(node, ignore_existing=True):
        if node.type == "VarHandleOp":
            return tf.raw_ops.VarHandleOp(**attrs)
        return tf.raw_ops.VariableV2(**attrs)
