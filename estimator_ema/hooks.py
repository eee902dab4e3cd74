"""`SessionRunHook`s that keep weight averages during `Estimator.train`."""

import logging

from estimator_ema import _ema, _graphs, _options, _savers, _swa, _variables
from estimator_ema._compat import tf
from estimator_ema._distribution import check_hook_strategy
from estimator_ema._graphs import adds_one, adds_one_to, ancestors

logger = logging.getLogger("estimator_ema")


class _AveragingHook(tf.train.SessionRunHook):
    """Runs an averager's update in every training step's own session run,
    after every op of that run that writes an averaged variable or the
    global step.

    In `begin()` the hook finds the ops a training step may fetch as its train
    op: the last ops, outside control flow, that are or follow a write of the
    global step and either group ops, write a variable or end a `tf.cond`
    whose branches do (`minimize(global_step=...)`'s increment, a `tf.group`
    after a Keras optimizer, a clip after the optimizer, a `tf.cond` around
    the apply: TF 2's `If` op, TF 1's `Merge` ops). For each it builds the
    update, in the cheapest way that op allows:

    - woven: an increment that adds one to the global step (not on a
      parameter server) gets the update as a control input, ordered after
      every op the increment waits for; a `tf.group` (NoOp) gets it after
      everything it groups. The train op then runs the update (with
      `every_n_steps=k`, behind the in-graph gate `with_ema` has), and the
      hook fetches nothing. With lazy rows, where the train op is neither
      (the increment of a global step on a parameter server), each dense
      average's update is woven into a group op among the train op's that
      follows its variable's writes (the optimizer's group of that parameter
      server's applies); if every one is, the hook fetches nothing either.
    - chained: any other op (one that writes a variable itself, say): the
      hook fetches the update, ordered after that op.

    `UPDATE_OPS` ops (batch-norm statistics) that the op does not run are run
    before the update. At the first run the hook checks the run's fetches:
    every op they run that writes an averaged variable or the global step must
    come before the update, or the hook raises RuntimeError naming them.

    With `every_n_steps=k` and a chained update, when each run provably adds
    one to the global step, the hook counts steps in Python and leaves
    not-due runs alone: no fetch. Each due run reads the global step back; if
    something else moved it, the hook warns and fetches the update (which
    checks the global step itself) with every step from then on.

    When a session starts at global step 0, the hook sets every average to its
    weight, so the averages start from the weights training starts from
    (after a warm start or a Scaffold `init_fn`). It warns of a Saver built
    before the averaging (`Averager.warn_of_savers`) and refuses one that saves
    a lazy average as it is kept (`Averager.check_savers`).

    Subclasses validate their options and name the averager class.
    """

    # The averager class: `_make_averager(options, graph)` builds it in begin().
    _make_averager = None

    def __init__(self, options):
        self._options = options
        self._averager = None

    @property
    def averager(self):
        """The averager built in `begin()` (None before)."""
        return self._averager

    def begin(self):
        check_hook_strategy(type(self).__name__)
        graph = tf.get_default_graph()
        self._averager = self._make_averager(self._options, graph)
        steps = {op: _training_step(graph, op) for op in _graphs.training_ops(
            self._averager.global_step, self._averager.variables)}
        only = list(steps.values())
        if len(only) == 1 and not isinstance(only[0], ValueError):
            self._averager.average_rows_lazily(only[0][1], _no_saver_refusal(graph))
        _savers.install(graph, self._averager)
        self._averager.warn_of_savers()
        if not graph.get_collection(tf.GraphKeys.SAVERS):
            logger.warning(
                "%s: the graph has no default Saver, so the model_fn's Scaffold brings its "
                "own, which may not save the averages (tf.keras.estimator.model_to_estimator "
                "in TF 2 needs checkpoint_format='saver').", type(self).__name__)
        self._period = self._averager.period()
        self._watched = list(self._averager.variables) + [self._averager.global_step]
        self._plans = {op: self._plan(op, step) for op, step in steps.items()}
        self._runs, self._key = {}, None
        self._start = self._averager.initialize_from_weights()
        self._averager.add_summaries()
        self._mode, self._counting, self._next_step = None, False, None

    def _plan(self, train_op, step_ops):
        """(mode, update, the increment the update runs before, or None) for steps
        that run `train_op`, given its `_training_step`; mode "refused" and the
        ValueError when UPDATE_OPS cannot be ordered. Where the updates are
        woven into ops the train op runs, "update" is the train op itself."""
        if isinstance(step_ops, ValueError):
            return "refused", step_ops, None
        extra, _ = step_ops
        step = self._averager.global_step
        if train_op not in ancestors(extra):
            if adds_one_to(train_op, step) and "/job:ps" not in step.device:
                after = ([t.op for t in train_op.inputs[1:]] + list(train_op.control_inputs)
                         + extra)
                update = self._averager.update(after=after, step_offset=1)
                train_op._add_control_input(update)
                return "woven", update, train_op
            if train_op.type == "NoOp":
                update = self._averager.update(after=list(train_op.control_inputs) + extra)
                train_op._add_control_input(update)
                return "woven", update, None
        # The run fetches the update beside the train op: it need not join it
        # (on a parameter server, the increment of the step there). With lazy
        # rows the updates may all be woven into the step: nothing to fetch.
        update = self._averager.update(after=[train_op] + extra, join=extra)
        if update is None:
            return "woven", train_op, None
        return "chained", self._with_step(update), None

    def _with_step(self, update):
        """(update, the global step read after it, or None if steps are never counted)."""
        if self._period == 1:
            return update, None
        with tf.control_dependencies([update]):
            return update, _variables.read_fresh(self._averager.global_step)

    def after_create_session(self, session, coord):
        self._averager.check_savers()
        # A new session may have restored another global step.
        self._next_step = None
        if session.run(self._averager.global_step) == 0:
            session.run(self._start)

    def before_run(self, run_context):
        # Every run of a training loop passes this: a woven run (the usual case)
        # does the least Python it can, its cost shows against a short step.
        fetches = run_context.original_args.fetches
        key = _fetches_key(fetches)
        if key != self._key:
            if key not in self._runs:
                self._runs[key] = self._choose(ancestors(fetches))
            self._key = key
            self._mode, self._update, self._counting = self._runs[key]
        if self._mode != "chained":
            return None
        self._skip = (self._counting and self._next_step is not None
                      and self._next_step % self._period != 0)
        if self._skip:
            return None
        return tf.train.SessionRunArgs(self._fetch(self._update))

    def _choose(self, ran):
        """(mode, update, counting) for runs of the ops `ran`; raises RuntimeError
        when the update cannot follow every write of the run."""
        name = type(self).__name__
        writes = _graphs.writers(self._watched, ran)
        if not writes:
            return "idle", None, False
        chosen = [op for op in self._plans if op in ran]
        if len(chosen) != 1:
            raise RuntimeError(
                "%s: the training step's fetches run %s train op(s) (%s) where the hook "
                "expects one op that writes the global step after the variables; its writes "
                "(%s) cannot be ordered before the averaging update. Decorate the model_fn "
                "with estimator_ema.with_ema / with_swa instead."
                % (name, len(chosen), _names(chosen) or "none", _names(writes)))
        mode, update, increment = self._plans[chosen[0]]
        if mode == "refused":
            raise update
        lazy = self._averager.lazy_writes_missed(ran)
        if lazy:
            raise RuntimeError(
                "%s: the training step runs %s, which write lazily averaged variables but "
                "are not the writes their lazy rows were built for (those the train op runs). "
                "Pass lazy_rows=False." % (name, _names(lazy)))
        before = ancestors(update[0] if mode == "chained" else update)
        missed = [op for op in _graphs.writers(self._averager.followed(), ran)
                  if op not in before and op is not increment]
        if missed:
            raise RuntimeError(
                "%s: the training step runs %s, which write averaged variables or the global "
                "step but are not run by its train op %s, so the averaging update cannot "
                "follow them. Make the train op run them (tf.group or "
                "tf.control_dependencies), or decorate the model_fn with "
                "estimator_ema.with_ema / with_swa." % (name, _names(missed), chosen[0].name))
        counting = mode == "chained" and self._can_count(ran)
        return mode, update, counting

    def _fetch(self, update):
        """What a due run fetches: the update, and the global step if counting."""
        return update if self._counting else update[0]

    def _can_count(self, ran):
        """Whether not-due runs can be told in Python: updates are periodic and
        each run of the ops `ran` adds exactly one to a global step no other
        task shares."""
        step = self._averager.global_step
        return (self._period > 1 and "/job:ps" not in step.device
                and adds_one(ran, step))

    def after_run(self, run_context, run_values):
        if self._mode != "chained":
            return
        if self._skip:
            self._next_step += 1
            return
        if self._counting:
            self._check_count(int(run_values.results[1]))

    def _check_count(self, step):
        """Takes the global step after a due run: the count goes on from it, or,
        if it is not what the count said, counting stops."""
        if self._next_step is not None and step != self._next_step:
            logger.warning(
                "%s: the global step is %d after this run where counting the runs gave %d, "
                "so something else moves it and an update due in between may have been "
                "missed; the update (which checks the global step itself) runs with "
                "every step from now on.", type(self).__name__, step, self._next_step)
            self._counting = False
            self._runs = {key: (mode, update, False)
                          for key, (mode, update, _) in self._runs.items()}
        self._next_step = step + 1


def _training_step(graph, train_op):
    """`_graphs.training_step` of the ops `train_op` runs, or its ValueError (the
    plan refuses the run then)."""
    try:
        return _graphs.training_step(graph, ancestors(train_op))
    except ValueError as error:
        return error


def _no_saver_refusal(graph):
    """Why lazy rows cannot be used with `graph`'s Saver, or None."""
    if graph.get_collection(tf.GraphKeys.SAVERS):
        return None
    return ("the graph has no default Saver to extend (a Scaffold's own Saver?), so "
            "checkpoints could not be made to hold plain averages")


_GRAPH_ELEMENTS = (tf.Operation, tf.Tensor)
_SEQUENCES = (list, tuple)


def _fetches_key(fetches):
    """A key of the ops and tensors `fetches` names, cheap to make every run (for
    one op, or Estimator's flat `[train_op, loss]`, it skips `tf.nest`)."""
    if isinstance(fetches, _GRAPH_ELEMENTS):
        return (id(fetches),)
    if isinstance(fetches, _SEQUENCES):
        for fetch in fetches:
            if not isinstance(fetch, _GRAPH_ELEMENTS):
                break
        else:
            return tuple(map(id, fetches))
    return tuple(map(id, tf.nest.flatten(fetches)))


def _names(ops):
    return ", ".join(sorted(op.name for op in ops)[:5])


class ExponentialMovingAverageHook(_AveragingHook):
    """Keeps exponential moving averages of model variables during training.

    After each training step the average `a` of each selected weight `w` becomes

        a <- decay_t * a + (1 - decay_t) * w,
        decay_t = min(decay, (1 + n) / (10 + n))   (num_updates=True)

    where `n` is the global step that the step produced. The averages live in
    variables named `<variable>/ExponentialMovingAverage`, are saved in the
    Estimator's checkpoints and restored when training resumes.

    The update runs in the training step's own session run, after every op of
    that run that writes an averaged variable or the global step (see
    `_AveragingHook`): woven into the train op when it is the global-step
    increment or a `tf.group`, so the hook fetches nothing (with
    `every_n_steps=k` too: the update's gate is in the graph), fetched after
    the train op otherwise. A session that starts at global step 0
    sets the averages to the weights.

    Example:

        hook = estimator_ema.ExponentialMovingAverageHook(decay=0.99)
        estimator.train(input_fn, steps=1000, hooks=[hook])

    Args:
      decay: float in [0, 1).
      num_updates: bool, use TF's warm-up `min(decay, (1 + n) / (10 + n))`.
      zero_debias: bool, debias the average as Adam does.
      variables: None (trainable variables and batch-norm moving statistics), a
        list of variables or a callable returning one in `begin()`.
      include: regex or list of regexes the variable's op name must match.
      exclude: regex or list of regexes the variable's op name must not match.
      every_n_steps: int `k`, update on global steps divisible by `k`, with
        decay `decay_t ** k`.
      name: shadow suffix, `<variable>/<name>`.
      skip_nonfinite: bool, leave the averages unchanged after a step whose
        selected weights hold a NaN or an infinity (off by default: it reads
        every weight once more per step).
      lazy_rows: bool; True (the default) averages a variable that the step
        writes only through sparse row updates (an embedding table) exactly,
        at the cost of the rows each step writes, also on a parameter-server
        cluster whose tasks train at once; checkpoints hold every row's
        average. False averages every row every step. Save with the graph's
        default Saver: one of your own that saves a lazy average is refused.

    Raises:
      TypeError, ValueError: for bad arguments, at construction.
      RuntimeError: in `begin()`, when the graph has no global step; when a
        session starts, for a Saver other than the graph's default one that
        saves a lazy average as it is kept; at the first run, when the step
        writes an averaged variable or the global step in an op the update
        cannot follow.
      ValueError: at the first run, for an `UPDATE_OPS` op inside a `tf.cond`
        branch that the train op does not run.
    """

    _make_averager = _ema.ExponentialMovingAverager

    def __init__(self, decay=0.999, *, num_updates=True, zero_debias=False, variables=None,
                 include=None, exclude=None, every_n_steps=1,
                 name=_options.EMA_NAME, skip_nonfinite=False, lazy_rows=True):
        super(ExponentialMovingAverageHook, self).__init__(_options.EmaOptions(
            decay=decay, num_updates=num_updates, zero_debias=zero_debias,
            variables=variables, include=include, exclude=exclude,
            every_n_steps=every_n_steps, name=name, skip_nonfinite=skip_nonfinite,
            lazy_rows=lazy_rows))


class StochasticWeightAveragingHook(_AveragingHook):
    """Keeps a stochastic weight average (SWA) of model variables during training.

    The weights after global step `s` enter the mean iff `s >= start_step` and
    `(s - start_step) % average_period == 0`; an entry of weight `w` into its
    average `a` is

        count <- count + 1,    a <- a + (w - a) / count

    so `a` is the plain mean of the entered weights. Until the first entry the
    averages mirror the weights. Global step 0 stands for the weights training
    starts from, so `start_step=0` includes them.

    The averages live in variables named `<variable>/StochasticWeightAverage`
    and the number of entries in the int64 variable
    `StochasticWeightAverage/count` (`<name>/...` for another `name`); both
    are saved in the Estimator's checkpoints, so a second `train()` continues
    the same mean. The update runs in the step's own session run, after its
    writes, as for `ExponentialMovingAverageHook`.

    Example:

        hook = estimator_ema.StochasticWeightAveragingHook(start_step=8000,
                                                           average_period=100)
        estimator.train(input_fn, steps=10000, hooks=[hook])
        averaged = estimator_ema.averaged_estimator(
            estimator, name="StochasticWeightAverage")

    Args:
      start_step: non-negative int, the first global step whose weights enter.
      average_period: positive int, the number of steps between two entries.
      variables: None (trainable variables and batch-norm moving statistics), a
        list of variables or a callable returning one in `begin()`.
      include: regex or list of regexes the variable's op name must match.
      exclude: regex or list of regexes the variable's op name must not match.
      name: shadow suffix, `<variable>/<name>`, and the count's scope.

    Raises:
      TypeError, ValueError: for bad arguments, at construction.
      RuntimeError: in `begin()`, when the graph has no global step; at the
        first run, when the step writes an averaged variable or the global
        step in an op the update cannot follow.
      ValueError: at the first run, for an `UPDATE_OPS` op inside a `tf.cond`
        branch that the train op does not run.
    """

    _make_averager = _swa.StochasticWeightAverager

    def __init__(self, start_step, average_period=1, *, variables=None, include=None,
                 exclude=None, name=_options.SWA_NAME):
        super(StochasticWeightAveragingHook, self).__init__(_options.SwaOptions(
            start_step=start_step, average_period=average_period, variables=variables,
            include=include, exclude=exclude, name=name))
