"""`with_ema` / `with_swa`: model_fn decorators that train, evaluate and predict with
averages."""

import functools
import inspect

from estimator_ema import _averaging
from estimator_ema._compat import tf, tf_estimator
from estimator_ema._distribution import check_decorator_strategy
from estimator_ema._graphs import ancestors, update_ops_to_run
from estimator_ema._savers import adopting_train_spec
from estimator_ema._scaffolds import AveragesSaver, replace_scaffold
from estimator_ema.checkpoints import checkpoint_key, saver_var_list

EVALUATE_WITH = ("averages", "weights", "both")
RAW_SCOPE = "raw_weights"


def _check_evaluate_with(evaluate_with):
    if evaluate_with not in EVALUATE_WITH:
        raise ValueError("'evaluate_with' must be one of %s (got %r)."
                         % (", ".join(repr(e) for e in EVALUATE_WITH), evaluate_with))
    return evaluate_with


def with_ema(model_fn=None, *, decay=0.999, num_updates=True, zero_debias=False,
             variables=None, include=None, exclude=None, every_n_steps=1,
             name=_averaging.EMA_NAME, skip_nonfinite=False, lazy_rows=True,
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
    averaged variable is restored from its average; no shadow variable is
    created. `"weights"` uses the raw weights; `"both"` evaluates the averages
    and, in the same `evaluate()`, the raw weights under metric names prefixed
    `raw_weights/` (the model_fn is built a second time under the
    `raw_weights` variable scope; model code whose variables do not follow
    variable scopes gets a ValueError). A SavedModel exported from the
    decorated model_fn holds the averaged values under the plain variable
    names.

    Example:

        @estimator_ema.with_ema(decay=0.999)
        def model_fn(features, labels, mode, params):
            ...

        estimator = tf.estimator.Estimator(model_fn, model_dir)

    Args:
      model_fn: the model_fn to decorate, taking `(features, labels, mode)` and
        optionally `params` and/or `config`; omit it to get a decorator.
      decay, num_updates, zero_debias, variables, include, exclude,
      every_n_steps, name, skip_nonfinite, lazy_rows: as for
        `ExponentialMovingAverageHook`.
      evaluate_with: "averages", "weights" or "both".

    Returns:
      The decorated model_fn (same signature), or a decorator.

    Raises:
      TypeError, ValueError: for bad arguments, at decoration.
    """
    options = _averaging.EmaOptions(
        decay=decay, num_updates=num_updates, zero_debias=zero_debias, variables=variables,
        include=include, exclude=exclude, every_n_steps=every_n_steps, name=name,
        skip_nonfinite=skip_nonfinite, lazy_rows=lazy_rows)
    return _decorator(model_fn, options, _averaging.ExponentialMovingAverager,
                      _check_evaluate_with(evaluate_with), "with_ema(decay=0.99)")


def with_swa(model_fn=None, *, start_step, average_period=1, variables=None, include=None,
             exclude=None, name=_averaging.SWA_NAME, evaluate_with="averages"):
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

    EVAL / PREDICT / export: as for `with_ema`, with the SWA weights.

    Example:

        @estimator_ema.with_swa(start_step=8000, average_period=100)
        def model_fn(features, labels, mode, params):
            ...

    Args:
      model_fn: the model_fn to decorate; omit it to get a decorator.
      start_step, average_period, variables, include, exclude, name: as for
        `StochasticWeightAveragingHook`.
      evaluate_with: "averages", "weights" or "both", as for `with_ema`.

    Returns:
      The decorated model_fn (same signature), or a decorator.

    Raises:
      TypeError, ValueError: for bad arguments, at decoration.
    """
    options = _averaging.SwaOptions(
        start_step=start_step, average_period=average_period, variables=variables,
        include=include, exclude=exclude, name=name)
    return _decorator(model_fn, options, _averaging.StochasticWeightAverager,
                      _check_evaluate_with(evaluate_with), "with_swa(start_step=1000)")


def _decorator(model_fn, options, make_averager, evaluate_with, usage):
    """`decorate(model_fn)` or, given `model_fn`, the decorated function.

    `usage` shows the decorator called with an option by keyword, for the
    message when an option is passed in place of `model_fn`.
    """

    def decorate(fn):
        if not callable(fn):
            raise TypeError(
                "'model_fn' must be callable (got %r); pass the options by keyword, "
                "e.g. @%s." % (fn, usage))
        return _averaged_model_fn(fn, options, make_averager, evaluate_with)

    return decorate if model_fn is None else decorate(model_fn)


def _averaged_model_fn(fn, options, make_averager, evaluate_with):
    @functools.wraps(fn)
    def averaged_model_fn(*args, **kwargs):
        spec = fn(*args, **kwargs)
        if not isinstance(spec, tf_estimator.EstimatorSpec):
            raise TypeError("The decorated model_fn must return a tf.estimator.EstimatorSpec "
                            "(got %r)." % (spec,))
        if spec.mode == tf_estimator.ModeKeys.TRAIN:
            check_decorator_strategy()
            return _train_spec(spec, make_averager(options))
        if evaluate_with == "weights":
            return spec
        if evaluate_with == "both" and spec.mode == tf_estimator.ModeKeys.EVAL:
            return _both_spec(spec, options, lambda: fn(*args, **kwargs))
        return _averages_spec(spec, options)

    # Estimator passes `params` / `config` by the model_fn's own argument names.
    averaged_model_fn.__signature__ = inspect.signature(fn)
    return averaged_model_fn


def _train_spec(spec, averager):
    if spec.scaffold.saver is not None:
        raise ValueError(
            "The model_fn's Scaffold has its own Saver, which would not save the averages; "
            "leave Scaffold.saver unset (Estimator then saves every variable) or use "
            "the averaging hook with a Saver that includes them.")
    graph = tf.get_default_graph()
    ran = ancestors(spec.train_op)
    averager.average_rows_lazily(ran)
    train_op = averager.update(after=[spec.train_op] + update_ops_to_run(graph, ran))
    averager.add_summaries()
    initialize = averager.initialize_from_weights()
    scaffold = replace_scaffold(spec.scaffold, init_fn=lambda session: session.run(initialize))
    return adopting_train_spec(spec._replace(train_op=train_op, scaffold=scaffold), averager)


def _averages_map(options, graph):
    """`[(checkpoint key, variable)]`: averaged variables from their averages."""
    averaged = set(options.selection.select(graph))
    return [(_averaging.shadow_name(checkpoint_key(v), options.name) if v in averaged
             else checkpoint_key(v), v)
            for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)]


def _averages_spec(spec, options):
    saver = AveragesSaver(saver_var_list(_averages_map(options, tf.get_default_graph())))
    return spec._replace(scaffold=replace_scaffold(spec.scaffold, saver=saver))


def _both_spec(spec, options, build_again):
    graph = tf.get_default_graph()
    averages_map = _averages_map(options, graph)
    existing = {v.op.name: v for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)}
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
    uncopied = [v.op.name for k, v in averages_map
                if k != checkpoint_key(v) and v.op.name not in raw_map]
    if strays or uncopied:
        raise ValueError(
            "evaluate_with='both' builds the model_fn again under the %r variable scope, but "
            "this model's variables do not follow it (new variables %s; no raw copy of %s). "
            "Create variables with tf.compat.v1.get_variable, tf.compat.v1.layers or tf_slim, "
            "or use evaluate_with='averages' or 'weights'."
            % (RAW_SCOPE, strays[:5], uncopied[:5]))
    saver = AveragesSaver(saver_var_list(averages_map),
                          saver_var_list((checkpoint_key(existing[plain]), var)
                                         for plain, var in raw_map.items()))
    return spec._replace(eval_metric_ops=metrics,
                         scaffold=replace_scaffold(spec.scaffold, saver=saver))
