"""Scaffold pieces that make a graph restore, and export, averaged weights."""

from estimator_ema._compat import tf


class AveragesSaver(tf.train.Saver):
    """A Saver that restores variables from their averages and saves plain names.

    `restore` reads each of `restore_maps` (Saver var_lists `{checkpoint key:
    variable or list of parts}`: a variable's average where it has one); `save`
    and `saver_def` are those of a plain Saver over the same variables.
    Estimator's export saves with the scaffold's saver, so a SavedModel
    exported through this saver holds the averaged values under the plain
    variable names, with no shadow copies.
    """

    def __init__(self, *restore_maps):
        variables = {}
        for mapping in restore_maps:
            for value in mapping.values():
                for var in (value if isinstance(value, list) else [value]):
                    variables[var.op.name] = var
        super(AveragesSaver, self).__init__(
            [variables[name] for name in sorted(variables)], sharded=True)
        self._restore_maps = restore_maps
        self._restorers = [tf.train.Saver(m, sharded=True) for m in restore_maps]

    def restore(self, sess, save_path):
        """Restores from `save_path`; raises ValueError, naming the checkpoint and
        the keys, if it lacks any (a checkpoint written before averaging began)."""
        keys = set(tf.train.NewCheckpointReader(save_path).get_variable_to_shape_map())
        missing = sorted(key for mapping in self._restore_maps for key in mapping
                         if key not in keys)
        if missing:
            raise ValueError(
                "Checkpoint %r has no %s (%d of the keys this model restores from); it was "
                "written before averaging began. Train on with averaging until the next "
                "checkpoint, or use the raw weights (evaluate_with='weights', or the "
                "original estimator)." % (save_path, ", ".join(missing[:5]), len(missing)))
        for restorer in self._restorers:
            restorer.restore(sess, save_path)


def replace_scaffold(scaffold, saver=None, init_fn=None):
    """A copy of `scaffold` with another saver and/or an extra init step.

    `init_fn(session)` runs after the scaffold's own `init_fn`, when a session
    is initialized rather than restored from a checkpoint.
    """
    bound = getattr(scaffold, "_init_fn", None)
    steps = [fn for fn in (bound, init_fn) if fn is not None]

    def chained(_, session):
        for step in steps:
            step(session)

    return tf.train.Scaffold(
        init_op=scaffold.init_op, init_feed_dict=scaffold.init_feed_dict,
        ready_op=scaffold.ready_op,
        ready_for_local_init_op=scaffold.ready_for_local_init_op,
        local_init_op=scaffold.local_init_op, summary_op=scaffold.summary_op,
        saver=saver if saver is not None else scaffold.saver,
        init_fn=chained if steps else None)
