"""Evaluating the averages during training, in memory: `InMemoryEvaluatorHook`.

TensorFlow's `tf.estimator.experimental.InMemoryEvaluatorHook` copies the
training session's variables into an evaluation graph by name; it refuses a
model whose Scaffold has a Saver ("InMemoryEvaluator does not support custom
saver"), which is how `with_ema` and `averaged_estimator` restore averages,
and for a model trained with the hook it would copy the raw weights. This
hook copies what a checkpoint's averages would restore: each variable's
average where training averages it (a lazily averaged table brought up to
date, as `average_tensors` reads it), its raw value otherwise, slice by slice
for partitioned variables, so its metrics are those of `evaluate()` on a
checkpoint written at the same step.
"""

import logging
import os

import numpy as np

from estimator_ema import _averaging, _checks, _options
from estimator_ema._compat import tf
from estimator_ema._scaffolds import CheckpointAveragesSaver
from estimator_ema._variables import read
from estimator_ema.checkpoints import checkpoint_key

logger = logging.getLogger("estimator_ema")

_NAME = "InMemoryEvaluatorHook"


def _slice(var):
    """`(offset, shape, full shape)` of `var` within the tensor saved under its
    `checkpoint_key` (the whole tensor unless it is a part)."""
    info = var._get_save_slice_info()
    shape = tuple(var.shape.as_list())
    if info is None:
        return (0,) * len(shape), shape, shape
    return tuple(info.var_offset), tuple(info.var_shape), tuple(info.full_shape)


class _Source(object):
    """The pieces of one tensor of the training graph, as a checkpoint would
    hold it under one key: `[(offset, shape, fetch name)]`, its full shape and dtype."""

    def __init__(self, full_shape, dtype, what):
        self.full_shape, self.dtype, self.what = full_shape, dtype, what
        self.pieces = []

    def add(self, offset, shape, fetch):
        self.pieces.append((offset, shape, fetch))

    def covers(self):
        """Whether the pieces tile the whole tensor (they never overlap)."""
        return sum(int(np.prod(shape)) for _, shape, _ in self.pieces) == int(
            np.prod(self.full_shape))

    def value(self, offset, shape, fetched, cache):
        """The slice at `offset` of `shape`, from the fetched pieces: one piece
        itself where it is that slice, else cut from the tensor joined once."""
        for start, size, fetch in self.pieces:
            if start == offset and size == shape:
                return fetched[fetch]
        key = id(self)
        if key not in cache:
            whole = np.empty(self.full_shape, fetched[self.pieces[0][2]].dtype)
            for start, size, fetch in self.pieces:
                whole[tuple(slice(o, o + s) for o, s in zip(start, size))] = fetched[fetch]
            cache[key] = whole
        return cache[key][tuple(slice(o, o + s) for o, s in zip(offset, shape))]


class InMemoryEvaluatorHook(tf.train.SessionRunHook):
    """Evaluates the averages during training, in memory, with no checkpoint.

    The averaged counterpart of `tf.estimator.experimental.InMemoryEvaluatorHook`,
    with its arguments and schedule: pass it to `estimator.train(hooks=...)`;
    it evaluates when the training session starts, after every
    `every_n_iter`-th training run of this `train()` call (runs, not global
    steps: a run from global step 0 evaluates at steps `n`, `2n`, ...) and
    when training ends (unless it has just evaluated that step), and writes
    the metrics as `evaluate()` does, to `<model_dir>/eval_<name>`
    (`<model_dir>/eval` without a `name`).

    The evaluation graph is built once, in `begin()`, from `estimator`'s EVAL
    mode; before each evaluation every one of its global variables `v` is
    set to what `evaluate()` would restore from a checkpoint written at that
    step:

        v <- average of v            where training averages v (name `average_name`)
        v <- v in the training graph  otherwise (the global step, optimizer slots)

    read in the training session after the step's averaging update. A lazily
    averaged embedding table gives its plain average, every row brought up
    to date (see `average_tensors`); a partitioned variable is copied slice
    by slice under its full name, so the two graphs may partition it
    differently. The metrics equal those of `evaluate()` of the averages on
    a checkpoint of that step. The model_fn's Scaffold `init_fn` and Saver
    are not run (`evaluate()` of a checkpoint does not run `init_fn` either).
    It evaluates the averages whatever `estimator` itself evaluates (a
    `with_ema(..., evaluate_with="weights")` Estimator too; with
    `evaluate_with="both"` its `raw_weights/` copies get the raw weights).
    An evaluation costs one read of every variable of the evaluation graph
    in the training session and one feed of it: a checkpoint's save and
    restore, without the disk.

    `estimator` is the Estimator whose evaluation of the averages you want:

    - a `with_ema` / `with_swa` model_fn's Estimator, trained with it;
    - `averaged_estimator(estimator)`, beside `estimator.train(..., hooks=[
      ExponentialMovingAverageHook(...), evaluator])`;
    - or that plain `estimator` itself: its evaluation graph gets the averages.

    With the averaging hooks, list this hook after the averaging hook: it
    finds the averages when it begins. A training without averages, or with
    the hook listed first, is a RuntimeError; for the raw weights use
    TensorFlow's hook. An evaluation-graph global variable that the training
    graph lacks is a RuntimeError (a checkpoint would lack it too): create it
    in TRAIN mode too, or make it a local variable.

    Example:

        evaluator = estimator_ema.InMemoryEvaluatorHook(
            estimator_ema.averaged_estimator(estimator), eval_input_fn,
            steps=10, every_n_iter=500)
        estimator.train(train_input_fn, max_steps=10000,
                        hooks=[estimator_ema.ExponentialMovingAverageHook(0.999),
                               evaluator])
        evaluator.evaluations[-1]["loss"]     # the averages' loss, as evaluate() gives

    Args:
      estimator: a `tf.estimator.Estimator` or `tf.compat.v1.estimator.Estimator`
        (canned ones, `with_ema` / `with_swa` ones, `averaged_estimator`'s).
      input_fn: callable, as for `estimator.evaluate`.
      steps: None (until `input_fn` ends) or positive int, evaluation batches.
      hooks: None or a list of `SessionRunHook`s for the evaluation, as for
        `estimator.evaluate`.
      name: None or str, the evaluation's name, as for `estimator.evaluate`.
      every_n_iter: positive int, evaluate after every `every_n_iter` training runs.
      average_name: None or str, the averages' suffix. None: the one
        `estimator` evaluates (`with_ema` / `with_swa` / `averaged_estimator`),
        or else the one averaging of the training graph.

    Raises:
      TypeError, ValueError: for bad arguments, at construction, and for a
        cluster in `estimator.config` (the hook evaluates on one machine).
      ValueError: in `begin()`, for an `average_name` other than the one
        `estimator` evaluates, or none when training keeps several.
      RuntimeError: in `begin()`, when training keeps no averages (of that
        name), under a `tf.distribute` strategy (`train_distribute`), and
        for an evaluation-graph variable that has no counterpart in
        training, has another shape or dtype, or is averaged in one graph
        only, or for saveable objects other than variables.
    """

    def __init__(self, estimator, input_fn, steps=None, hooks=None, name=None,
                 every_n_iter=100, *, average_name=None):
        self._estimator = _checks.check_estimator(estimator)
        if not callable(input_fn):
            raise TypeError("'input_fn' must be callable (got %r)." % (input_fn,))
        if steps is not None:
            steps = _checks.check_positive_int("steps", steps)
        hooks = list(hooks or [])
        if not all(isinstance(h, tf.train.SessionRunHook) for h in hooks):
            raise TypeError("'hooks' must be a list of tf.compat.v1.train.SessionRunHook "
                            "(got %r)." % (hooks,))
        if name is not None and not isinstance(name, str):
            raise TypeError("'name' must be None or a string (got %r)." % (name,))
        self._every_n_iter = _checks.check_positive_int("every_n_iter", every_n_iter)
        if average_name is not None:
            average_name = _checks.check_name(average_name, "average_name")
        config = estimator.config
        if config.num_ps_replicas > 0 or config.num_worker_replicas > 1:
            raise ValueError(
                "%s evaluates on a single machine only (got %d parameter server(s) and %d "
                "worker(s) in estimator.config); on a cluster, evaluate the checkpoints' "
                "averages (averaged_estimator(estimator).evaluate, or the with_ema / with_swa "
                "Estimator's evaluate)." % (_NAME, config.num_ps_replicas,
                                            config.num_worker_replicas))
        self._input_fn = input_fn
        self._average_name = average_name
        self._eval_dir = os.path.join(estimator.model_dir, "eval_" + name if name else "eval")
        self._hooks = hooks + list(estimator._convert_eval_steps_to_hooks(steps))
        self._timer = tf.train.SecondOrStepTimer(every_steps=self._every_n_iter)
        self._evaluations = []

    @property
    def evaluations(self):
        """The results of the evaluations so far, oldest first: dicts as
        `estimator.evaluate` returns them (metrics, `loss`, `global_step`)."""
        return list(self._evaluations)

    def begin(self):
        """Builds the evaluation graph, and the reads of the averages and weights
        it copies from the training graph.

        Raises:
          ValueError, RuntimeError: see the class.
        """
        if tf.distribute.has_strategy():
            raise RuntimeError(
                "%s cannot read variables that %s mirrors (RunConfig(train_distribute=...)); "
                "evaluate the checkpoints' averages instead (the with_ema / with_swa "
                "Estimator's evaluate)." % (_NAME, type(tf.distribute.get_strategy()).__name__))
        self._timer.reset()
        self._iter_count = 0
        train_graph = tf.get_default_graph()
        self._graph = tf.Graph()
        with self._graph.as_default():
            scaffold, self._update_op, self._eval_dict, self._all_hooks = (
                self._estimator._evaluate_build_graph(self._input_fn, self._hooks,
                                                      checkpoint_path=None))
            saver = scaffold.saver if isinstance(scaffold.saver, CheckpointAveragesSaver) else None
            variables = self._graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
            saveables = self._graph.get_collection(tf.GraphKeys.SAVEABLE_OBJECTS)
            if saveables:
                raise RuntimeError(
                    "%s: the evaluation graph has saveable objects other than variables "
                    "(%s), which cannot be copied from training; evaluate checkpoints "
                    "instead (averaged_estimator(estimator).evaluate, or the with_ema / "
                    "with_swa Estimator's evaluate)." % (_NAME, saveables[:3]))
        averager = self._averager(train_graph, saver)
        with train_graph.as_default():
            plan, fetches = _plan(variables, averager, train_graph, saver)
        self._fetches = fetches
        with self._graph.as_default(), tf.name_scope("copy_from_training"):
            self._plan = [(var, tf.placeholder(var.dtype.base_dtype, var.shape), source,
                           offset, shape) for var, source, offset, shape in plan]
            self._copy = tf.group(*[tf.assign(var, fed) for var, fed, _, _, _ in self._plan])
        self._feed = None
        self._scaffold = tf.train.Scaffold(init_fn=self._copy_values,
                                           copy_from_scaffold=scaffold)

    def _averager(self, graph, saver):
        """The training graph's averager whose averages are evaluated."""
        evaluated = saver.average_name if saver is not None else None
        name = self._average_name
        if evaluated is not None and name is not None and name != evaluated:
            raise ValueError("'average_name' must be the name of the averages the estimator "
                             "evaluates, %r (got %r)." % (evaluated, name))
        name = name or evaluated
        found = _averaging.averagers(graph)
        names = sorted({a.options.name for a in found})
        if name is None and len(names) > 1:
            raise ValueError("%s: the training graph has averages named %s; pass "
                             "'average_name' to say which to evaluate."
                             % (_NAME, ", ".join(repr(n) for n in names)))
        name = name or (names[0] if names else _options.EMA_NAME)
        chosen = [a for a in found if a.options.name == name]
        if not chosen:
            raise RuntimeError(
                "%s: the training graph has no averages named %r (it has: %s); pass the hook "
                "to train() after ExponentialMovingAverageHook / StochasticWeightAveragingHook "
                "(hooks=[averaging, evaluator]), or train a with_ema / with_swa model_fn; to "
                "evaluate the raw weights, use tf.estimator.experimental.InMemoryEvaluatorHook."
                % (_NAME, name, ", ".join(repr(n) for n in names) or "none"))
        return chosen[-1]

    def _copy_values(self, scaffold, session):
        """The evaluation session's `init_fn`: sets every variable to its value."""
        del scaffold
        session.run(self._copy, self._feed)

    def after_create_session(self, session, coord):
        """Evaluates the averages the training session starts from."""
        self._evaluate(session)

    def after_run(self, run_context, run_values):
        """Evaluates after every `every_n_iter`-th run."""
        self._iter_count += 1
        if self._timer.should_trigger_for_step(self._iter_count):
            self._evaluate(run_context.session)

    def end(self, session):
        """Evaluates the final averages, unless the last run was just evaluated."""
        if self._timer.last_triggered_step() != self._iter_count:
            self._evaluate(session)

    def _evaluate(self, train_session):
        fetched = train_session.run(self._fetches)
        cache = {}
        self._feed = {fed: source.value(offset, shape, fetched, cache)
                      for _, fed, source, offset, shape in self._plan}
        try:
            with self._graph.as_default():
                results = self._estimator._evaluate_run(
                    checkpoint_path=None, scaffold=self._scaffold, update_op=self._update_op,
                    eval_dict=self._eval_dict, all_hooks=self._all_hooks,
                    output_dir=self._eval_dir)
        finally:
            self._feed = None
        self._evaluations.append(results)
        logger.info("%s: evaluated the averages at global step %d.", _NAME,
                    results[tf.GraphKeys.GLOBAL_STEP])
        self._timer.update_last_triggered_step(self._iter_count)


def _plan(variables, averager, graph, saver):
    """`([(evaluation variable, its _Source, offset, shape)], {fetch name: tensor})`:
    where each of `variables` (the evaluation graph's) takes its value from in
    the training `graph`, averaged by `averager`, and what to fetch there.
    Checks what `CheckpointAveragesSaver.restore` checks of a checkpoint."""
    averaged = {v.op.name: v for v in averager.variables}
    average_tensors = averager.values()
    raw_copies = ({id(copy): key for key, copy in saver.raw_copies}
                  if saver is not None else {})
    by_key = {}
    for var in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES):
        by_key.setdefault(checkpoint_key(var), []).append(var)
    averaged_keys = {checkpoint_key(v) for v in averager.variables}
    if saver is not None:
        unaveraged = [key for key in saver.selected_keys if key not in averaged_keys]
        if unaveraged:
            raise RuntimeError(
                "%s: the estimator's %s graph selects %s for averaging, but training does not "
                "average it (a variable trainable only outside TRAIN, say); select it in TRAIN "
                "too, or in no mode (exclude=)." % (_NAME, saver.mode, unaveraged))
    sources, fetches, plan, missing = {}, {}, [], []
    for var in variables:
        key = raw_copies.get(id(var))
        kind = "raw" if key is not None else None
        key = key or checkpoint_key(var)
        kind = kind or ("average" if key in averaged_keys else "raw")
        if key not in by_key:
            missing.append(var.op.name)
            continue
        if (key, kind) not in sources:
            sources[key, kind] = _source(key, kind, by_key[key], averaged, average_tensors,
                                         fetches, averager.options.name)
        source = sources[key, kind]
        offset, shape, full_shape = _slice(var)
        if full_shape != source.full_shape or var.dtype.base_dtype != source.dtype:
            raise RuntimeError(
                "%s: the evaluation graph's %s is %s of shape %s, but the training graph's "
                "%s is %s of shape %s." % (_NAME, var.op.name, var.dtype.base_dtype.name,
                                           list(full_shape), source.what, source.dtype.name,
                                           list(source.full_shape)))
        if not source.covers() and not any(p[:2] == (offset, shape) for p in source.pieces):
            raise RuntimeError(
                "%s: the training graph has the %s of only some parts of %s, not the slice "
                "that the evaluation graph's %s holds; average every part of it, or none "
                "(include= / exclude=)." % (_NAME, kind, key, var.op.name))
        plan.append((var, source, offset, shape))
    if missing:
        raise RuntimeError(
            "%s: the evaluation graph's global variable(s) %s have no counterpart in the "
            "training graph to copy (a checkpoint would lack them too); create them in TRAIN "
            "mode too, or make them local variables "
            "(collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])." % (_NAME, sorted(missing)))
    return plan, fetches


def _source(key, kind, parts, averaged, average_tensors, fetches, name):
    """The `_Source` of checkpoint key `key`: the averages (`kind` "average") or
    the values ("raw") of the training variables `parts` saved under it."""
    if kind == "average":
        parts = [v for v in parts if v.op.name in averaged]
    first = parts[0]
    what = (_options.shadow_name(key, name) if kind == "average" else key)
    source = _Source(_slice(first)[2], first.dtype.base_dtype, what)
    for var in parts:
        fetch = "%s:%s" % (kind, var.op.name)
        if kind == "average":
            fetches[fetch] = average_tensors[var.op.name]
        else:
            with tf.name_scope("in_memory_evaluator/"):
                fetches[fetch] = read(var)
        offset, shape, _ = _slice(var)
        source.add(offset, shape, fetch)
    return source
