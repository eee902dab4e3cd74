"""Scaffold pieces that make a graph restore, and export, averaged weights."""

from estimator_ema._compat import tf
from estimator_ema._options import shadow_name
from estimator_ema.checkpoints import checkpoint_averages, checkpoint_key


def _slice(var):
    """`(slice spec, full shape)` of `var` under its `checkpoint_key`: a
    partitioned variable's part is a slice of the whole."""
    info = var._get_save_slice_info()
    if info is not None:
        return info.spec, list(info.full_shape)
    return "", var.shape.as_list()


class CheckpointAveragesSaver(tf.train.Saver):
    """A Saver that restores each variable from its average in the checkpoint it restores.

    Which variables have an average is read from the checkpoint given to
    `restore`, whichever that is (the model_dir's latest, or `checkpoint_path=`
    of evaluate, predict or export), not from the graph: a variable averaged in
    training is restored from its average even where the graph does not
    select it (one trainable in TRAIN only). Every one of `variables` is
    restored, as by Estimator's default Saver: `<v>/<name>` where the
    checkpoint has it, `<v>` otherwise (optimizer slots, the global step,
    variables without an average). A partitioned variable's part reads its
    slice of `<full name>/<name>`. Each `(key, copy)` of `raw_copies` is
    restored from `key` as it is (`evaluate_with="both"`'s copies of the raw
    weights; kept as the list `raw_copies`). `save` and `saver_def` are those
    of a plain Saver over the same variables, so a SavedModel exported through
    it holds the averaged values under the plain names.

    `selected`, with `mode` (`"EVAL"`, `"PREDICT"`), are the variables the
    decorator's graph of that mode selects for averaging: each must have an
    average in the checkpoint.
    """

    def __init__(self, variables, name, raw_copies=(), selected=(), mode=None):
        variables = sorted(variables, key=lambda v: v.op.name)
        raw_copies = list(raw_copies)
        restored = variables + [copy for _, copy in raw_copies]
        super(CheckpointAveragesSaver, self).__init__(restored, sharded=True)
        self._average_name = name
        self._variables = variables
        self._selected = sorted({checkpoint_key(v) for v in selected})
        self._mode = mode
        with tf.name_scope("restore_averages"), tf.device("/device:CPU:0"):
            self._prefix = tf.placeholder(tf.string, [], name="prefix")
            self._keys = tf.placeholder(tf.string, [len(restored)], name="keys")
            values = tf.raw_ops.RestoreV2(
                prefix=self._prefix, tensor_names=self._keys,
                shape_and_slices=[_slice(v)[0] for v in restored],
                dtypes=[v.dtype.base_dtype for v in restored])
        self._restored = restored
        self.raw_copies = raw_copies
        self._restore_op = tf.group(*[tf.assign(v, value) for v, value in zip(restored, values)])

    @property
    def average_name(self):
        """The averages' suffix: each variable is restored from `<v>/<name>`."""
        return self._average_name

    @property
    def selected_keys(self):
        """The checkpoint keys of the variables that must have an average."""
        return list(self._selected)

    @property
    def mode(self):
        """The mode of the graph (`"EVAL"`, `"PREDICT"`) that selects them, or None."""
        return self._mode

    def restore(self, sess, save_path):
        """Loads every variable from checkpoint `save_path`, from its average where it has one.

        Raises:
          ValueError: the checkpoint has no average named `name` for any of
            the variables or for a selected one, lacks a variable, or holds
            one with another shape.
        """
        shapes = tf.train.NewCheckpointReader(save_path).get_variable_to_shape_map()
        averages = checkpoint_averages(shapes, self._average_name)
        self._check_selected(save_path, averages)
        keys = [averages.get(key, key) for key in map(checkpoint_key, self._variables)]
        keys += [key for key, _ in self.raw_copies]
        missing = []
        for key, var in zip(keys, self._restored):
            shape = _slice(var)[1]
            if key not in shapes:
                missing.append(key)
            elif shapes[key] != shape:
                raise ValueError("Checkpoint %r holds %s with shape %s, but variable %s has "
                                 "shape %s." % (save_path, key, shapes[key], var.op.name, shape))
        if missing:
            raise ValueError("Checkpoint %r has no value for variable(s) %s."
                             % (save_path, sorted(set(missing))))
        if not set(keys) & set(averages.values()):
            raise ValueError("Checkpoint %r has no averages named %r for this model's variables."
                             % (save_path, self._average_name))
        sess.run(self._restore_op, {self._prefix: save_path, self._keys: keys})

    def _check_selected(self, save_path, averages):
        """Raises ValueError if a selected variable has no average in the checkpoint."""
        unaveraged = [key for key in self._selected if key not in averages]
        if not unaveraged:
            return
        if not any(checkpoint_key(v) in averages for v in self._variables):
            missing = [shadow_name(key, self._average_name) for key in unaveraged]
            raise ValueError(
                "Checkpoint %r has no %s (%d of the keys this model restores from); it was "
                "written before averaging began. Train on with averaging until the next "
                "checkpoint, or use the raw weights (evaluate_with='weights', or the "
                "original estimator)." % (save_path, ", ".join(missing[:5]), len(missing)))
        raise ValueError(
            "Checkpoint %r has no average of %s, which this model's %s graph selects for "
            "averaging: training did not average it (its TRAIN graph did not select it; a "
            "variable trainable only outside TRAIN, say). Select it in TRAIN too (make it "
            "trainable there), or in no mode (exclude=), or use the raw weights "
            "(evaluate_with='weights')." % (save_path, unaveraged, self._mode))


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
