"""`with_ema` / `with_swa`: model_fn decorators that train, evaluate and predict with
averages."""

import functools
import inspect
import sys

from estimator_ema import _ema, _options, _swa
from estimator_ema._compat import ESTIMATOR_CLASSES, tf, tf_estimator
from estimator_ema._distribution import check_decorator_strategy
from estimator_ema._graphs import ancestors, training_ops, training_step
from estimator_ema._savers import adopting_train_spec
from estimator_ema._scaffolds import CheckpointAveragesSaver, replace_scaffold
from estimator_ema.checkpoints import checkpoint_key

EVALUATE_WITH = ("averages", "weights", "both")
RAW_SCOPE = "raw_weights"


def _check_evaluate_with(evaluate_with):
    if evaluate_with not in EVALUATE_WITH:
        raise ValueError("'evaluate_with' must be one of %s (got %r)."
                         % (", ".join(repr(e) for e in EVALUATE_WITH), evaluate_with))
    return evaluate_with


def with_ema(model_fn=None, *, decay=0.999, num_updates=True, zero_debias=False,
             variables=None, include=None, exclude=None, every_n_steps=1,
             name=_options.EMA_NAME, skip_nonfinite=False, lazy_rows=True,
             evaluate_with="averages"):
    """Decorates a model_fn so it keeps, and uses, exponential moving averages.

    TRAIN: the returned `train_op` runs the model_fn's train op, then every
    `UPDATE_OPS` op it does not run (batch-norm statistics the model_fn did not
    wire; one built inside a `tf.cond` branch must be wired inside it:
    ValueError otherwise), then the update of every average `a` of a selected
    weight `w`:

        a <- d * a + (1 - d) * w,    d = min(decay, (1 + n) / (10 + n))

    (`n` the global step after the update; `d = decay` with
    `num_updates=False`). A session that starts from scratch sets each average
    to its weight after initialization, so averages start from warm-started
    weights too.

    EVAL / PREDICT: with `evaluate_with="averages"` (the default) every
    variable that has an average in the checkpoint is restored from it; no
    shadow variable is created. Which variables have one is read from the
    checkpoint, not from this mode's graph, so a variable trainable in TRAIN
    only is restored from its average; one this graph selects that training
    did not average (trainable only outside TRAIN) is a ValueError.
    `"weights"` uses the raw weights; `"both"` evaluates the averages and, in
    the same `evaluate()`, the raw weights under metric names prefixed
    `raw_weights/` (the model_fn is built a second time under the
    `raw_weights` variable scope; model code whose variables do not follow
    variable scopes gets a ValueError). A SavedModel exported from the
    decorated model_fn holds the averaged values under the plain variable
    names.

    TPUEstimator: a model_fn may return a `TPUEstimatorSpec`. The averages'
    initialization (TRAIN) and the saver that restores the averages
    (EVAL / PREDICT / export) then go into its `scaffold_fn`, which wraps the
    model_fn's own; the distance summaries are not written, since summary ops
    cannot run in a TPU computation; `evaluate_with="both"` is refused.

    An Estimator in place of `model_fn` (a canned one, say, whose model_fn
    you never see): the result is a new Estimator over the same model_dir,
    config, params and warm start whose model_fn is the original's, decorated.
    It is a plain `tf.estimator.Estimator` for a v2 Estimator and a
    `tf.compat.v1.estimator.Estimator` for a v1 one (in TF 1.15 both are
    `tf.estimator.Estimator`), not the canned class; the original Estimator is
    left as it was and still evaluates the raw weights. A `TPUEstimator` is
    refused: decorate the model_fn you give it.

    Example:

        @estimator_ema.with_ema(decay=0.999)
        def model_fn(features, labels, mode, params):
            ...

        estimator = tf.estimator.Estimator(model_fn, model_dir)

        # or, for an Estimator you did not write:
        estimator = estimator_ema.with_ema(
            tf.estimator.DNNClassifier([64], feature_columns, model_dir=model_dir),
            decay=0.999)

    Args:
      model_fn: the model_fn to decorate, taking `(features, labels, mode)` and
        optionally `params` and/or `config`, returning an `EstimatorSpec` or a
        `TPUEstimatorSpec`; or an Estimator (not a TPUEstimator); omit it to
        get a decorator (which takes either).
      decay: as for `ExponentialMovingAverageHook`.
      num_updates: as for `ExponentialMovingAverageHook`.
      zero_debias: as for `ExponentialMovingAverageHook`.
      variables: as for `ExponentialMovingAverageHook`.
      include: as for `ExponentialMovingAverageHook`.
      exclude: as for `ExponentialMovingAverageHook`.
      every_n_steps: as for `ExponentialMovingAverageHook`.
      name: as for `ExponentialMovingAverageHook`.
      skip_nonfinite: as for `ExponentialMovingAverageHook`.
      lazy_rows: as for `ExponentialMovingAverageHook`.
      evaluate_with: "averages", "weights" or "both".

    Returns:
      The decorated model_fn (same signature), an Estimator for an Estimator,
      or a decorator.

    Raises:
      TypeError, ValueError: for bad arguments, at decoration.
    """
    options = _options.EmaOptions(
        decay=decay, num_updates=num_updates, zero_debias=zero_debias, variables=variables,
        include=include, exclude=exclude, every_n_steps=every_n_steps, name=name,
        skip_nonfinite=skip_nonfinite, lazy_rows=lazy_rows)
    return _decorator(model_fn, options, _ema.ExponentialMovingAverager,
                      _check_evaluate_with(evaluate_with), "with_ema(decay=0.99)")


def with_swa(model_fn=None, *, start_step, average_period=1, variables=None, include=None,
             exclude=None, name=_options.SWA_NAME, evaluate_with="averages"):
    """Decorates a model_fn so it keeps, and uses, a stochastic weight average.

    TRAIN: the returned `train_op` runs the model_fn's train op, then every
    `UPDATE_OPS` op, then the SWA update. The weights after global step `s`
    enter the mean iff `s >= start_step` and
    `(s - start_step) % average_period == 0`; an entry of weight `w` into its
    average `a` is

        count <- count + 1,    a <- a + (w - a) / count

    Until the first entry the averages mirror the weights. A session that
    starts from scratch sets each average to its weight and the count
    (`<name>/count`) to 0 (to 1 with `start_step=0`: global step 0 stands for
    the starting weights), so a warm-started model averages from the
    warm-started weights, whatever the warm start loaded.

    EVAL / PREDICT / export, `TPUEstimatorSpec`, an Estimator in place of
    `model_fn`: as for `with_ema`, with the SWA weights.

    Example:

        @estimator_ema.with_swa(start_step=8000, average_period=100)
        def model_fn(features, labels, mode, params):
            ...

    Args:
      model_fn: the model_fn to decorate, or an Estimator, as for `with_ema`;
        omit it to get a decorator.
      start_step: as for `StochasticWeightAveragingHook`.
      average_period: as for `StochasticWeightAveragingHook`.
      variables: as for `StochasticWeightAveragingHook`.
      include: as for `StochasticWeightAveragingHook`.
      exclude: as for `StochasticWeightAveragingHook`.
      name: as for `StochasticWeightAveragingHook`.
      evaluate_with: "averages", "weights" or "both", as for `with_ema`.

    Returns:
      The decorated model_fn (same signature), an Estimator for an Estimator,
      or a decorator.

    Raises:
      TypeError, ValueError: for bad arguments, at decoration.
    """
    options = _options.SwaOptions(
        start_step=start_step, average_period=average_period, variables=variables,
        include=include, exclude=exclude, name=name)
    return _decorator(model_fn, options, _swa.StochasticWeightAverager,
                      _check_evaluate_with(evaluate_with), "with_swa(start_step=1000)")


def _decorator(model_fn, options, make_averager, evaluate_with, usage):
    """`decorate(model_fn)` or, given `model_fn`, the decorated function.

    `decorate` also takes an Estimator: see `_decorated_estimator`. `usage`
    shows the decorator called with an option by keyword, for the message when
    an option is passed in place of `model_fn`.
    """

    def decorate(fn):
        if isinstance(fn, ESTIMATOR_CLASSES):
            return _decorated_estimator(fn, decorate, usage)
        if not callable(fn):
            raise TypeError(
                "'model_fn' must be callable (got %r); pass the options by keyword, "
                "e.g. @%s." % (fn, usage))
        return _averaged_model_fn(fn, options, make_averager, evaluate_with)

    return decorate if model_fn is None else decorate(model_fn)


def _decorated_estimator(estimator, decorate, usage):
    """An Estimator like `estimator` whose model_fn is `decorate(its model_fn)`.

    Same model_dir, config, params and warm start; a `tf.estimator.Estimator`
    for a v2 Estimator, a `tf.compat.v1.estimator.Estimator` for a v1 one
    (canned Estimators only add a constructor around their model_fn).
    """
    if isinstance(estimator, tf.estimator.tpu.TPUEstimator):
        raise TypeError(
            "'model_fn' cannot be a TPUEstimator (got %r): TPUEstimator wraps its model_fn "
            "for the TPU; decorate the model_fn you give it instead, "
            "TPUEstimator(model_fn=%s(model_fn), ...)." % (estimator, usage.split("(")[0]))
    flavour = (tf_estimator.Estimator if isinstance(estimator, tf_estimator.Estimator)
               else tf.estimator.Estimator)
    # `params` is {} when none were given, which a model_fn without a `params`
    # argument does not accept.
    return flavour(model_fn=decorate(estimator._model_fn), model_dir=estimator.model_dir,
                   config=estimator.config, params=estimator.params or None,
                   warm_start_from=estimator._warm_start_settings)


def _is_tpu_spec(spec):
    return isinstance(spec, tf.estimator.tpu.TPUEstimatorSpec)


def _averaged_model_fn(fn, options, make_averager, evaluate_with):
    @functools.wraps(fn)
    def averaged_model_fn(*args, **kwargs):
        spec = fn(*args, **kwargs)
        if not isinstance(spec, tf_estimator.EstimatorSpec) and not _is_tpu_spec(spec):
            raise TypeError("The decorated model_fn must return a tf.estimator.EstimatorSpec "
                            "or a TPUEstimatorSpec (got %r)." % (spec,))
        if spec.mode == tf_estimator.ModeKeys.TRAIN:
            if _exporting():
                return _exported_train_spec(spec, options)
            check_decorator_strategy()
            return _train_spec(spec, make_averager(options))
        if evaluate_with == "weights":
            return spec
        if evaluate_with == "both" and spec.mode == tf_estimator.ModeKeys.EVAL:
            if _is_tpu_spec(spec):
                raise ValueError(
                    "evaluate_with='both' needs an EstimatorSpec's eval_metric_ops (got a "
                    "TPUEstimatorSpec); use evaluate_with='averages' or 'weights'.")
            return _both_spec(spec, options, lambda: fn(*args, **kwargs))
        return _averages_spec(spec, options)

    # Estimator passes `params` / `config` by the model_fn's own argument names.
    averaged_model_fn.__signature__ = inspect.signature(fn)
    return averaged_model_fn


def _exporting():
    """Whether Estimator builds this graph to export it, not to train: a TRAIN
    graph of `experimental_export_all_saved_models` or of `export_saved_model(...,
    experimental_mode=TRAIN)`, which Estimator builds in `_add_meta_graph_for_mode`
    (TF 1.15 and 2.4 to 2.15) and saves with the variables its scaffold's saver
    restored."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_add_meta_graph_for_mode":
            return True
        frame = frame.f_back
    return False


def _exported_train_spec(spec, options):
    """The model_fn's own TRAIN spec, for an export: its variables restored from
    their averages, so every meta graph of the SavedModel holds the averages
    under the plain names (the variables are saved once, from the first mode
    exported, TRAIN)."""
    def averages_scaffold(scaffold):
        variables = tf.get_default_graph().get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
        return replace_scaffold(scaffold,
                                saver=CheckpointAveragesSaver(variables, options.name))

    return _with_scaffold(spec, averages_scaffold)


def _with_scaffold(spec, change):
    """`spec` with its Scaffold replaced by `change(scaffold)`.

    A TPUEstimatorSpec's change runs in its `scaffold_fn`, which TPUEstimator
    calls on the host, outside the TPU computation, once the model is built.
    """
    if not _is_tpu_spec(spec):
        return spec._replace(scaffold=change(spec.scaffold))
    scaffold_fn = spec.scaffold_fn
    return spec._replace(
        scaffold_fn=lambda: change(scaffold_fn() if scaffold_fn else tf.train.Scaffold()))


def _train_spec(spec, averager):
    graph = tf.get_default_graph()
    extra, ran = training_step(graph, ancestors(spec.train_op))
    # Lazy rows are woven around the writes wherever they run: with
    # SyncReplicasOptimizer, in the chief's queue runner, whose update no
    # train op runs.
    averager.average_rows_lazily(ran | ancestors(training_ops(averager.global_step,
                                                              averager.variables)))
    train_op = averager.update(after=[spec.train_op] + extra)
    if not _is_tpu_spec(spec):
        # Summary ops cannot run inside a TPU computation.
        averager.add_summaries()

    def initializing_scaffold(scaffold):
        if scaffold.saver is not None:
            raise ValueError(
                "The model_fn's Scaffold has its own Saver, which would not save the "
                "averages; leave Scaffold.saver unset (Estimator then saves every variable; "
                "tf.keras.estimator.model_to_estimator does with checkpoint_format='saver') "
                "or use the averaging hook with a Saver that includes them.")
        initialize = averager.initialize_from_weights()
        return replace_scaffold(scaffold, init_fn=lambda session: session.run(initialize))

    return adopting_train_spec(
        _with_scaffold(spec._replace(train_op=train_op), initializing_scaffold), averager)


_MODES = {tf_estimator.ModeKeys.EVAL: "EVAL", tf_estimator.ModeKeys.PREDICT: "PREDICT"}


def _restored(options):
    """The variables an EVAL / PREDICT graph restores, its global variables as
    they are now, and those of them it selects for averaging, which may be
    none: the checkpoint says which are restored from an average (see
    `CheckpointAveragesSaver`), the selection which must be."""
    graph = tf.get_default_graph()
    return (graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES),
            options.selection.select(graph, required=False))


def _averages_spec(spec, options):
    def averages_scaffold(scaffold):
        variables, selected = _restored(options)
        saver = CheckpointAveragesSaver(variables, options.name, selected=selected,
                                        mode=_MODES[spec.mode])
        return replace_scaffold(scaffold, saver=saver)

    return _with_scaffold(spec, averages_scaffold)


def _both_spec(spec, options, build_again):
    graph = tf.get_default_graph()
    variables, selected = _restored(options)
    existing = {v.op.name: v for v in variables}
    with tf.variable_scope(RAW_SCOPE):
        raw_spec = build_again()
    prefix = RAW_SCOPE + "/"
    metrics = dict(spec.eval_metric_ops or {})
    for key, value in (raw_spec.eval_metric_ops or {}).items():
        metrics[prefix + key] = value
    metrics[prefix + "loss"] = tf.metrics.mean(raw_spec.loss)
    needed = ancestors([raw_spec.loss, [metrics[k] for k in metrics if k.startswith(prefix)]])
    raw_map, strays = {}, []
    for var in list(graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)):
        if var.op.name in existing:
            continue
        plain = var.op.name[len(prefix):] if var.op.name.startswith(prefix) else None
        if plain in existing:
            raw_map[plain] = var
        elif var.op in needed:
            strays.append(var.op.name)
        else:
            # Made by the second build but unused by its metrics (an optimizer's
            # slots, say): initialize it like a metric variable.
            graph.get_collection_ref(tf.GraphKeys.GLOBAL_VARIABLES).remove(var)
            graph.add_to_collection(tf.GraphKeys.LOCAL_VARIABLES, var)
    uncopied = [v.op.name for v in selected if v.op.name not in raw_map]
    if strays or uncopied:
        raise ValueError(
            "evaluate_with='both' builds the model_fn again under the %r variable scope, but "
            "this model's variables do not follow it (new variables %s; no raw copy of %s). "
            "Create variables with tf.compat.v1.get_variable, tf.compat.v1.layers or tf_slim, "
            "or use evaluate_with='averages' or 'weights'."
            % (RAW_SCOPE, strays[:5], uncopied[:5]))
    saver = CheckpointAveragesSaver(
        variables, options.name, selected=selected, mode=_MODES[spec.mode],
        raw_copies=[(checkpoint_key(existing[plain]), var) for plain, var in raw_map.items()])
    return spec._replace(eval_metric_ops=metrics,
                         scaffold=replace_scaffold(spec.scaffold, saver=saver))
