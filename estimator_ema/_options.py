"""Names and validated options of the averages, shared by hooks and decorators.

Shadow variables are named exactly as `tf.compat.v1.train.ExponentialMovingAverage`
names them, `<variable op name>/<name>`, so stock
`ExponentialMovingAverage(decay).variables_to_restore()` reads the checkpoints
this package writes, and the other way round.
"""

from estimator_ema import _checks
from estimator_ema._selection import Selection

EMA_NAME = "ExponentialMovingAverage"
SWA_NAME = "StochasticWeightAverage"

DEBIAS_HELPERS = ("biased", "local_step")
"""The zero-debias helpers of an average: `<average>/biased`, `<average>/local_step`."""

LAZY_CLOCK = "lazy_clock"
"""A lazy average's clock (see `_rows`): `<average>/lazy_clock`. Checkpoints do
not hold it."""

HELPERS = DEBIAS_HELPERS + (LAZY_CLOCK, "lazy_scale")
"""Every helper variable an average may have, `<average>/<helper>`: the zero-debias
helpers, a lazy average's clock, and the scale that checkpoints of development
versions before 0.1.0 hold for a lazy average (always 0 there: plain averages)."""


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
        writes only through sparse row updates (embedding tables) is averaged
        exactly at the cost of the rows each step writes, on one machine and on
        a parameter-server cluster; checkpoints hold every row's average (see
        `_rows`). False averages every row every step. Lazy rows combine with
        `num_updates` and `every_n_steps`; with `zero_debias` or
        `skip_nonfinite` every variable is averaged densely (logged).
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
