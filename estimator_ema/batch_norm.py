"""`update_batch_norm`: fresh batch-norm statistics for averaged (SWA) weights.

A batch-norm layer's `moving_mean` / `moving_variance` describe the
activations of the weights that produced them. The average of the moving
statistics along a trajectory is not, in general, the statistics of the
averaged weights (activations are not linear in the weights), so after
stochastic weight averaging they are recomputed, as PyTorch's
`torch.optim.swa_utils.update_bn` does.
"""

import logging
import os
import uuid

import numpy as np

from estimator_ema import _checks, _options, checkpoints
from estimator_ema._compat import tf, tf_estimator
from estimator_ema._selection import is_batch_norm_statistic
from estimator_ema.checkpoints import model_variables

logger = logging.getLogger("estimator_ema")

_MOVING_AVERAGE_UPDATES = ("AssignSub", "AssignSubVariableOp")
_WRITES = _MOVING_AVERAGE_UPDATES + ("Assign", "AssignVariableOp", "AssignAdd",
                                     "AssignAddVariableOp")
# Keras wraps the delta in `where(inputs_size > 0, delta, zeros)` for ragged batches.
_SELECTS = ("Select", "SelectV2")


def update_batch_norm(estimator, input_fn, *, steps, name=_options.SWA_NAME,
                      output_dir=None, checkpoint_path=None):
    """Recomputes batch-norm statistics for the averaged weights; writes a new checkpoint.

    Builds the estimator's model_fn in TRAIN mode on `input_fn`'s features,
    loads every variable from its average (`<variable>/<name>`) where the
    checkpoint has one and from itself otherwise, and runs `steps` batches
    forward, without training. Each batch-norm layer then normalizes with the
    statistics of the batch, as in training, so no layer's statistics depend
    on the stale moving statistics. Each `moving_mean` / `moving_variance`
    becomes the equal average over the batches

        moving = (1 / K) * sum_k value_k

    of `value_k`, the tensor the layer's own moving-average update
    (`moving <- moving - (moving - value) * (1 - momentum)`) reads in batch
    `k`: PyTorch's `momentum=None`. So the variance is the layer's own choice:
    the biased batch variance for non-fused layers (`tf.compat.v1.layers` and
    Keras on 2-D inputs), the Bessel-corrected one (`n / (n - 1)`) for fused
    layers (4-D inputs, `tf_slim.batch_norm`). A layer called several times
    per step contributes every call.

    The result is written to a new checkpoint, `<output_dir>/model.ckpt-<global
    step>`, under a temporary name renamed at the end; `output_dir`'s
    `checkpoint` file names it. It holds the model's variables under their
    plain names, averaged weights and recomputed statistics, and no averages,
    SWA count or optimizer slots (variables named `<another variable>/...`).
    The source model_dir is never written.

    Example:

        path = estimator_ema.update_batch_norm(estimator, train_input_fn, steps=200,
                                               output_dir="/tmp/swa_bn")
        # A hook-trained estimator evaluates it directly:
        estimator.evaluate(eval_input_fn, checkpoint_path=path)
        # Or any Estimator with the plain model_fn over output_dir:
        tf.estimator.Estimator(model_fn, "/tmp/swa_bn").evaluate(eval_input_fn)

    Args:
      estimator: the `tf.estimator.Estimator` or `tf.compat.v1.estimator.Estimator`
        (canned ones too) trained with SWA (hook or decorator). A decorated
        model_fn's EVAL reads the averages, which the new checkpoint does not
        hold: evaluate it with the undecorated model_fn or
        `evaluate_with="weights"`.
      input_fn: training input_fn, called as Estimator calls it in TRAIN mode.
      steps: positive int, the number of batches (fewer if the input ends
        first; a warning says so).
      name: the averages' suffix, `StochasticWeightAverage` by default.
      output_dir: directory of the new checkpoint; by default `<model_dir>_swa_bn`.
        It must not be the model_dir or the source checkpoint's directory.
      checkpoint_path: the source checkpoint; by default the model_dir's latest.

    Returns:
      The new checkpoint's path (a prefix, as `tf.train.latest_checkpoint` gives).

    Raises:
      TypeError, ValueError: for bad arguments; ValueError when the checkpoint
        has no averages named `name`, the model has no batch-norm statistic
        updated in TRAIN mode, or `input_fn` gives no batch.
    """
    _checks.check_estimator(estimator)
    if not callable(input_fn):
        raise TypeError("'input_fn' must be callable (got %r)." % (input_fn,))
    steps = _checks.check_positive_int("steps", steps)
    name = _checks.check_name(name)
    source = checkpoints.resolve_checkpoint(
        estimator.model_dir if checkpoint_path is None else checkpoint_path,
        "estimator.model_dir" if checkpoint_path is None else "checkpoint_path")
    output_dir = _check_output_dir(output_dir, estimator.model_dir, source)

    with tf.Graph().as_default() as graph:
        if estimator.config.tf_random_seed is not None:
            tf.set_random_seed(estimator.config.tf_random_seed)
        tf.train.get_or_create_global_step()
        features, labels, input_hooks = estimator._get_features_and_labels_from_input_fn(
            input_fn, tf_estimator.ModeKeys.TRAIN)
        estimator._call_model_fn(features, labels, tf_estimator.ModeKeys.TRAIN,
                                 estimator.config)
        # The model's variables: not the averages, optimizer slots or SWA count
        # that a decorated model_fn creates.
        variables = [v for v in model_variables(graph)
                     if v.op.name != _options.count_name(name)]
        statistics = _statistic_values(variables)
        restorer = tf.train.Saver(checkpoints.averaged_variable_map(variables, source, name))
        writer = tf.train.Saver({v.op.name: v for v in variables})
        means = {var: tf.placeholder(var.dtype.base_dtype, var.shape) for var in statistics}
        assign = tf.group(*[tf.assign(var, mean) for var, mean in means.items()])
        for hook in input_hooks:
            hook.begin()
        initialize = tf.group(tf.global_variables_initializer(),
                              tf.local_variables_initializer(), tf.tables_initializer())
        global_step = tf.train.get_global_step()
        graph.finalize()
        with tf.Session(config=estimator.config.session_config) as session:
            session.run(initialize)
            restorer.restore(session, source)
            for hook in input_hooks:
                hook.after_create_session(session, None)
            values = _mean_over_batches(session, statistics, steps)
            session.run(assign, {means[var]: values[var] for var in statistics})
            path = _save(session, writer, output_dir, session.run(global_step))
    logger.info("update_batch_norm: recomputed %d batch-norm statistics from %s; wrote %s",
                len(statistics), source, path)
    return path


def _check_output_dir(output_dir, model_dir, source):
    if output_dir is None:
        return model_dir.rstrip("/\\") + "_swa_bn"
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError("'output_dir' must be a directory path (got %r)." % (output_dir,))
    output_dir = os.fspath(output_dir)
    source_dirs = {_comparable(model_dir), _comparable(os.path.dirname(source))}
    if _comparable(output_dir) in source_dirs:
        raise ValueError("'output_dir' must not be the source model_dir or checkpoint "
                         "directory, which update_batch_norm never writes (got %r)."
                         % (output_dir,))
    return output_dir


def _comparable(path):
    return os.path.normcase(os.path.abspath(path)) if "://" not in path else path.rstrip("/")


def _statistic_values(variables):
    """`{moving statistic: [tensor its moving-average update reads]}`.

    Raises ValueError when no batch-norm statistic is written in the graph, or
    one is written otherwise than by a moving average. A statistic never
    written (a layer frozen with `training=False`) keeps its averaged value,
    and a warning names it.
    """
    candidates = [v for v in variables if is_batch_norm_statistic(v.op.name)]
    found, frozen = {}, []
    for var in candidates:
        writes = _writes_to(var)
        if writes:
            found[var] = [_moving_average_input(op, var) for op in writes]
        else:
            frozen.append(var.op.name)
    if not found:
        raise ValueError(
            "update_batch_norm found no batch-norm statistics that the model_fn updates in "
            "TRAIN mode (candidates: %s)." % ([v.op.name for v in candidates],))
    if frozen:
        logger.warning("update_batch_norm: no update in TRAIN mode for %s; they keep their "
                       "averaged values.", frozen)
    return found


def _writes_to(var):
    """The ops in the graph that write to `var`, but its initializer and the
    restore ops of Savers (whose value comes from a checkpoint)."""
    return [op for op in var.graph.get_operations()
            if op.type in _WRITES and op.inputs[0].op is var.op and op is not var.initializer
            and not _from_checkpoint(op.inputs[1])]


def _from_checkpoint(tensor):
    op = tensor.op
    while op.type == "Identity":
        op = op.inputs[0].op
    return op.type in ("RestoreV2", "Restore", "RestoreSlice")


def _moving_average_input(update, var):
    """`value` in `update: var <- var - (var - value) * decay`.

    Raises ValueError for an update of another shape (tf_slim's
    `zero_debias_moving_mean`, say), whose batch statistic is not found.
    """
    delta = update.inputs[1].op
    while delta.type in _SELECTS:
        delta = delta.inputs[1].op
    if update.type in _MOVING_AVERAGE_UPDATES and delta.type == "Mul":
        for factor in delta.inputs:
            if factor.op.type == "Sub" and _reads(factor.op.inputs[0], var):
                return factor.op.inputs[1]
    raise ValueError(
        "update_batch_norm cannot find the batch statistic in %s, the update of %s: it "
        "supports moving averages 'var - (var - value) * (1 - momentum)' (tf.compat.v1."
        "layers, Keras and tf_slim batch normalization without zero-debiasing)."
        % (update.name, var.op.name))


def _reads(tensor, var):
    """Whether `tensor` is `var`'s value: the variable itself or a read of it."""
    op = tensor.op
    while op is not var.op and op.type in ("Identity", "ReadVariableOp") and op.inputs:
        op = op.inputs[0].op
    return op is var.op


def _mean_over_batches(session, statistics, steps):
    """`{statistic: equal average of its values over up to `steps` batches}`."""
    sums = {var: np.zeros(var.shape.as_list(), np.float64) for var in statistics}
    batches = 0
    while batches < steps:
        try:
            results = session.run(statistics)
        except tf.errors.OutOfRangeError:
            break
        for var, values in results.items():
            for value in values:
                sums[var] += value
        batches += 1
    if not batches:
        raise ValueError("update_batch_norm: 'input_fn' gave no batch.")
    if batches < steps:
        logger.warning("update_batch_norm: 'input_fn' ran out after %d of %d batches; "
                       "the statistics average those.", batches, steps)
    return {var: (total / (batches * len(statistics[var]))).astype(
        var.dtype.base_dtype.as_numpy_dtype) for var, total in sums.items()}


def _save(session, saver, output_dir, step):
    """Saves to a temporary prefix in `output_dir`, renames it to
    `model.ckpt-<step>` (index last) and points `checkpoint` at it."""
    tf.gfile.MakeDirs(output_dir)
    final = os.path.join(output_dir, "model.ckpt-%d" % step)
    temporary = os.path.join(output_dir, ".tmp-%s-model.ckpt-%d" % (uuid.uuid4().hex, step))
    try:
        saver.save(session, temporary, write_meta_graph=False, write_state=False)
        files = sorted(tf.gfile.Glob(temporary + ".*"), key=lambda f: f.endswith(".index"))
        for path in files:
            tf.gfile.Rename(path, final + path[len(temporary):], overwrite=True)
    finally:
        for path in tf.gfile.Glob(temporary + "*"):
            tf.gfile.Remove(path)
    tf.train.update_checkpoint_state(output_dir, os.path.basename(final))
    return final
