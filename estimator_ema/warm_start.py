"""Warm-starting a new model from the averages in a checkpoint."""

import re

from estimator_ema import _checks, _options
from estimator_ema._compat import VERSION, tf, tf_estimator
from estimator_ema._selection import is_batch_norm_statistic
from estimator_ema.checkpoints import (reports_unreadable_checkpoints, require_averages,
                                       resolve_checkpoint)


def _matches(patterns, var_name):
    """Whether TF's warm start selects `var_name` (`re.match` on the tensor name)."""
    return any(re.match(p, var_name + ":0") for p in patterns)


@reports_unreadable_checkpoints
def warm_start_from_averages(checkpoint_or_model_dir, vars_to_warm_start=".*", *,
                             name=_options.EMA_NAME, include_averages=False):
    """`tf.estimator.WarmStartSettings` that start a new model from the averages.

    Each averaged variable `<v>` selected by `vars_to_warm_start` is
    initialized from `<v>/<name>` through `var_name_to_prev_var_name`; other
    selected variables from their own value, as TF's warm start does. Nothing
    is written to disk. `vars_to_warm_start` keeps TF's meaning: a single regex
    selects trainable variables only (so batch-norm moving statistics are not
    warm-started, and their averages are left out of the mapping); a list of
    regexes selects among all global variables.

    TF's warm start raises when a mapped variable is not in the new model, so
    for a new model with fewer variables (a new head, say) narrow
    `vars_to_warm_start`, e.g. `"^(?!head/)"` or `["body/"]`.

    `include_averages=True` also warm-starts the averages `<v>/<name>` (and
    zero-debias helpers) from the old ones, so averaging continues rather than
    restarts. That needs the new graph to have the averages when the warm start
    runs, i.e. built in the model_fn (stock `ExponentialMovingAverage.apply`),
    and `vars_to_warm_start` as a list (averages are not trainable).
    `ExponentialMovingAverageHook` creates its averages after the warm start,
    from the warm-started weights, so with the hook they start from the old
    averages either way and its zero-debias helpers restart.

    Before 2.8 (1.15 and 2.4 to 2.7), TensorFlow's warm start initializes
    only one variable per checkpoint tensor (the last one wins, silently), so
    there `include_averages=True` is refused, and list patterns must not
    select averages that the new graph builds in its model_fn.

    Example:

        settings = estimator_ema.warm_start_from_averages("/models/run1")
        new = tf.estimator.Estimator(model_fn, "/models/run2", warm_start_from=settings)

    Args:
      checkpoint_or_model_dir: str, a checkpoint prefix or a model_dir (its
        latest checkpoint, resolved now).
      vars_to_warm_start: a regex string or a list of regex strings, as in
        `tf.estimator.WarmStartSettings`.
      name: str, the averages' suffix.
      include_averages: bool, also warm-start the averages themselves.

    Returns:
      A `tf.estimator.WarmStartSettings`.

    Raises:
      TypeError: arguments of the wrong type.
      ValueError: no checkpoint there, no averages named `name`, patterns that
        select none of the averaged variables, or `include_averages=True` with
        a single regex or on TensorFlow before 2.8.
    """
    name = _checks.check_name(name)
    include_averages = _checks.check_bool("include_averages", include_averages)
    checkpoint = resolve_checkpoint(checkpoint_or_model_dir)
    single = isinstance(vars_to_warm_start, str)
    patterns = _checks.check_patterns("vars_to_warm_start", vars_to_warm_start)
    if not patterns:
        raise ValueError("'vars_to_warm_start' must be a regex string or a non-empty list of "
                         "them (got %r)." % (vars_to_warm_start,))
    if include_averages and VERSION < (2, 8):
        raise ValueError(
            "'include_averages' needs TensorFlow 2.8 or later: the warm start of TensorFlow %s "
            "cannot initialize a variable and its average from the same checkpoint tensor "
            "(got True)." % tf.__version__)
    if include_averages and single:
        raise ValueError(
            "'include_averages' needs 'vars_to_warm_start' as a list of regexes, since a "
            "single regex warm-starts only trainable variables and averages are not "
            "trainable (got %r)." % (vars_to_warm_start,))
    averages = require_averages(checkpoint, [k for k, _ in tf.train.list_variables(checkpoint)],
                                 name)
    selected = {var: average for var, average in averages.items()
                if _matches([p.pattern for p in patterns], var)
                and not (single and is_batch_norm_statistic(var))}
    if not selected:
        raise ValueError("'vars_to_warm_start' selects none of the %d averaged variables in %r "
                         "(got %r)." % (len(averages), checkpoint, vars_to_warm_start))
    warm = vars_to_warm_start if single else list(vars_to_warm_start)
    if include_averages:
        warm += ["%s(/(%s))?(/part_\\d+)?:" % (re.escape(average),
                                              "|".join(_options.DEBIAS_HELPERS))
                 for average in sorted(selected.values())]
    return tf_estimator.WarmStartSettings(
        ckpt_to_initialize_from=checkpoint, vars_to_warm_start=warm,
        var_name_to_prev_var_name=selected)

