"""Lazy averages of sparsely written variables (embedding tables), exact per row.

A training step that updates an embedding table through `IndexedSlices`
gradients writes only the rows its batch looked up; every other row keeps its
value. The average of a constant `w` over the steps after `s` up to `t` has a
closed form,

    a <- D * a + (1 - D) * w,    D = the product of the decays in effect then,

so each row's average only needs bringing up to date when its row changes:
before the step's write (from the old value, up to the step before), and after
it (from the new value, for the step itself). A per-row int64 `last` records
the global step up to which the row's average is exact; it is saved beside the
average as `<average>/last_step`. Before a checkpoint is saved every row is
brought up to date, so checkpoints hold the exact average of every row under
the stock name and stock code reads them as it reads any average.
"""

import math

from estimator_ema._compat import tf
from estimator_ema._graphs import ancestors, writers

LAST_STEP = "last_step"
"""The per-row bookkeeping of a lazy average: `<average>/last_step`."""


def row_writes(variable, ran):
    """The indices tensors of the ops among `ran` that write `variable`, if each
    of them is a sparse row write (a sparse optimizer apply or a scatter on the
    variable itself, outside control flow); None otherwise, or if none writes it."""
    ops = writers([variable], ran)
    if not ops:
        return None
    indices = []
    for op in ops:
        position = _indices_position(op)
        if (position is None or op.inputs[0] is not variable.op.outputs[0]
                or op._get_control_flow_context() is not None):
            return None
        indices.append(op.inputs[position])
    return sorted(ops, key=lambda op: op.name), indices


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


class LazyRows(object):
    """One lazily averaged variable: its average, its per-row `last` and the rows
    the training step writes (unique, int64, from the writes' `indices`)."""

    def __init__(self, variable, average, last, indices):
        self.variable, self.average, self.last = variable, average, last
        flat = [i if i.dtype == tf.int64 and i.shape.ndims == 1
                else tf.reshape(tf.cast(i, tf.int64), [-1]) for i in indices]
        self.rows = tf.unique(flat[0] if len(flat) == 1 else tf.concat(flat, 0))[0]


def log_decay_product(after, upto, decay, num_updates, every_n_steps):
    """log of the product of the decays in effect over the steps `s`,
    `after < s <= upto`, whose update is due (float64, `after` broadcast).

    The decay of step `s` is `decay`, or `min(decay, (1 + s) / (10 + s))` with
    `num_updates`; with `every_n_steps=k` only multiples of `k` update, with the
    decay to the power `k`. The warm-up's product telescopes, through
    `sum_{j=lo..hi} log(j + c) = lgamma(hi + 1 + c) - lgamma(lo + c)` over the
    due steps `s = j * k`.
    """
    k = every_n_steps
    lo = after // k + 1  # the due steps are j * k for lo <= j <= hi
    hi = upto // k
    if decay == 0.0:
        return tf.where_v2(hi >= lo, tf.constant(-math.inf, tf.float64),
                           tf.constant(0.0, tf.float64))
    log_constant = k * math.log(decay)
    if not num_updates or decay <= 0.1:
        return tf.cast(tf.maximum(hi - lo + 1, 0), tf.float64) * log_constant
    # Warm-up steps: (1 + s) / (10 + s) < decay, i.e. s < (10 d - 1) / (1 - d).
    last_warm = int(math.ceil((10.0 * decay - 1.0) / (1.0 - decay) / k)) - 1
    warm_hi = tf.minimum(hi, last_warm)
    lo_f, warm_hi_f = tf.cast(lo, tf.float64), tf.cast(warm_hi, tf.float64)

    def sum_log(c):  # sum over lo <= j <= warm_hi of log(j + c)
        return tf.math.lgamma(warm_hi_f + 1.0 + c) - tf.math.lgamma(lo_f + c)

    warm = tf.where_v2(warm_hi >= lo, k * (sum_log(1.0 / k) - sum_log(10.0 / k)),
                       tf.constant(0.0, tf.float64))
    constant = tf.maximum(hi - tf.maximum(lo, last_warm + 1) + 1, 0)
    return warm + tf.cast(constant, tf.float64) * log_constant
