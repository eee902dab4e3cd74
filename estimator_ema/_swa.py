"""Stochastic weight averaging: the averager behind the SWA hook and `with_swa`."""

from estimator_ema._averaging import Averager
from estimator_ema._compat import tf
from estimator_ema._variables import create_count, read

class StochasticWeightAverager(Averager):
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
        self.count = create_count(options.name, self._initial_count(), self.global_step)

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
        return tf.logical_or(self.is_entry(step), tf.equal(read(self.count), 0))

    def _apply(self, step, order):
        entry = self.is_entry(step)
        entered = self.count.assign_add(tf.cast(entry, tf.int64), read_value=False)
        with tf.control_dependencies([entered]):
            count = read(self.count)
        first = tf.less_equal(count, 1)
        count_by_dtype = {}
        updates = []
        for i, (var, avg) in enumerate(zip(self.variables, self.averages)):
            dtype = avg.dtype.base_dtype
            if dtype not in count_by_dtype:
                count_by_dtype[dtype] = tf.cast(tf.maximum(count, 1), dtype)
            with tf.control_dependencies(order.follows(i)):
                value = read(var)
            old = read(avg)
            mean = old + (value - old) / count_by_dtype[dtype]
            updates.append(tf.assign(avg, tf.where_v2(first, value, mean)))
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
        return ([("num_entries", tf.cast(read(self.count), tf.float32))]
                + super(StochasticWeightAverager, self)._summaries())
