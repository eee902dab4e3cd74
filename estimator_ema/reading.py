"""Reading the averages: a checkpoint's into numpy arrays, a training graph's as
tensors."""

from estimator_ema import _averaging, _checks, _options
from estimator_ema._compat import tf
from estimator_ema.checkpoints import (reports_unreadable_checkpoints, require_averages,
                                       resolve_checkpoint)


@reports_unreadable_checkpoints
def read_averages(checkpoint_or_model_dir, *, name=_options.EMA_NAME):
    """Reads the averages in a checkpoint, keyed by the averaged variable's name.

    The average of variable `v` is the checkpoint's `<v>/<name>`; with
    `name="StochasticWeightAverage"` this reads SWA averages instead of EMA.
    A partitioned variable is keyed by its full name (as the checkpoint names
    it), with the whole tensor.

    Example:

        averages = estimator_ema.read_averages(estimator.model_dir)
        averages["dense/kernel"]          # numpy array, the kernel's average

    Args:
      checkpoint_or_model_dir: str, a checkpoint prefix or a model_dir (its
        latest checkpoint is read).
      name: str, the averages' suffix.

    Returns:
      `{variable name: numpy array}`, one entry per average in the checkpoint.

    Raises:
      TypeError: a path or `name` of the wrong type.
      ValueError: no checkpoint there, a bad `name`, or no averages named `name`.
    """
    name = _checks.check_name(name)
    checkpoint = resolve_checkpoint(checkpoint_or_model_dir)
    reader = tf.train.NewCheckpointReader(checkpoint)
    averages = require_averages(checkpoint, reader.get_variable_to_shape_map(), name)
    return {var: reader.get_tensor(key) for var, key in sorted(averages.items())}


def average_tensors(*, name=_options.EMA_NAME):
    """Tensors of the training graph's averages as they are now, to fetch in session.

    Keyed by the averaged variable's name. Use them, not the average
    variables, to log or summarize the averages while training: an
    embedding table averaged by lazy rows keeps in its average variable
    each row's average as of the row's last write, and these tensors bring
    every row up to date (as checkpoints do), without writing any variable.
    Call it in a hook's `begin()` once the averaging is built: with
    `with_ema` / `with_swa` in any hook passed to `train()`; with
    `ExponentialMovingAverageHook` / `StochasticWeightAveragingHook` in a
    hook listed after it.

    Example:

        class LogAverages(tf.compat.v1.train.SessionRunHook):
            def begin(self):
                self.averages = estimator_ema.average_tensors()

            def after_run(self, run_context, run_values):
                values = run_context.session.run(self.averages)

    Args:
      name: str, the averages' suffix (`"StochasticWeightAverage"` for SWA).

    Returns:
      `{variable name: tensor}`, one entry per averaged variable (a part of a
      partitioned variable under the part's name, `<v>/part_<i>`).

    Raises:
      TypeError: `name` of the wrong type.
      ValueError: a bad `name`, or the default graph has no averages named
        `name` (yet).
    """
    name = _checks.check_name(name)
    graph = tf.get_default_graph()
    found = [a for a in _averaging.averagers(graph) if a.options.name == name]
    if not found:
        raise ValueError(
            "The default graph has no averages named %r (it has: %s); call "
            "average_tensors in a hook's begin() once the averaging is built (a hook passed "
            "to train() after ExponentialMovingAverageHook / StochasticWeightAveragingHook, "
            "or any hook with with_ema / with_swa)."
            % (name, ", ".join(sorted(repr(a.options.name) for a in _averaging.averagers(graph)))
               or "none"))
    return found[-1].values()
