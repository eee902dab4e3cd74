"""Reading the averages in a checkpoint into numpy arrays."""

from estimator_ema import _checks, _options
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

