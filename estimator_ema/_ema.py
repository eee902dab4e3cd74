"""Exponential moving averages: the averager behind the EMA hook and `with_ema`."""

from estimator_ema import _rows
from estimator_ema._averaging import Averager
from estimator_ema._compat import tf
from estimator_ema._options import DEBIAS_HELPERS
from estimator_ema._variables import create_shadow, read, read_fresh


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
        return _rows.LazyRows(found, self._log_decay, self.options.name)

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
