"""`SessionRunHook`s that keep weight averages during `Estimator.train`."""

import logging

from estimator_ema import _averaging, _savers
from estimator_ema._compat import tf
from estimator_ema._distribution import check_hook_strategy
from estimator_ema._graphs import adds_one, adds_one_to, ancestors

logger = logging.getLogger("estimator_ema")


class _AveragingHook(tf.train.SessionRunHook):
    """Runs an averager's update after every training step, in the cheapest
    way the graph allows (decided in `begin()` and at the first run):

    - woven: when the graph's `TRAIN_OP` collection holds a single op that adds
      one to the global step (what `Optimizer.minimize(global_step=...)`
      builds), the update is ordered after that op's inputs (every variable
      update) and `UPDATE_OPS`, and the increment after the update, by a
      control input added to it. The update then runs whenever the train op
      runs, and the hook fetches nothing.
    - chained: otherwise, when the step's fetches run every `TRAIN_OP` op, the
      update joins the step's session run as a fetch, ordered after those ops
      and `UPDATE_OPS`.
    - separate: otherwise (a Keras optimizer, say) it runs in a separate session
      run right after each step, and the hook logs that once.

    When only every `k`-th step's update can change anything (`every_n_steps`)
    and the step's fetches provably add one to the global step, the update is
    chained or separate, and the hook counts steps in Python and leaves the
    other runs alone: no fetch, no extra run. Each due run reads the global
    step back; if something else moved it, the hook warns and runs the update
    (which checks the global step itself) with every step from then on.

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
        _savers.install(graph, self._averager)
        if not graph.get_collection(tf.GraphKeys.SAVERS):
            logger.warning(
                "%s: the graph has no default Saver, so the model_fn's Scaffold brings its "
                "own, which may not save the averages (tf.keras.estimator.model_to_estimator "
                "in TF 2 needs checkpoint_format='saver').", type(self).__name__)
        self._train_ops = list(graph.get_collection(tf.GraphKeys.TRAIN_OP))
        update_ops = list(graph.get_collection(tf.GraphKeys.UPDATE_OPS))
        self._period = self._averager.period()
        self._mode = None
        self._counting = False
        self._next_step = None
        self._woven = self._weave(update_ops)
        self._chained_update = None
        if self._train_ops and self._woven is None:
            self._chained_update = self._with_step(
                self._averager.update(after=self._train_ops + update_ops))
        self._separate_update = self._with_step(self._averager.update())
        self._averager.add_summaries()

    def _weave(self, update_ops):
        """Orders an update before the single TRAIN_OP op if it adds one to the
        global step and nothing it would wait for needs it; returns that op, or None."""
        if self._period != 1 or len(self._train_ops) != 1:
            return None
        increment = self._train_ops[0]
        # What the increment waits for: its control inputs and its added value's
        # op (which carries them when they were given to both).
        after = [t.op for t in increment.inputs[1:]] + list(increment.control_inputs) + update_ops
        if (not adds_one_to(increment, self._averager.global_step)
                or increment in ancestors(after)):
            return None
        increment._add_control_input(self._averager.update(after=after, step_offset=1))
        return increment

    def _with_step(self, update):
        """(update, the global step read after it, or None if steps are never counted)."""
        if self._period == 1:
            return update, None
        with tf.control_dependencies([update]):
            return update, _averaging.read_step(self._averager.global_step)

    def _fetch(self, update):
        """What a due run fetches: the update, and the global step if counting."""
        return update if self._counting else update[0]

    def after_create_session(self, session, coord):
        # A new session may have restored another global step.
        self._next_step = None

    def before_run(self, run_context):
        if self._mode is None:
            ran = ancestors(run_context.original_args.fetches)
            self._mode = self._choose_mode(ran)
            self._counting = self._mode != "woven" and self._can_count(ran)
        self._skip = (self._counting and self._next_step is not None
                      and self._next_step % self._period != 0)
        if self._mode == "chained" and not self._skip:
            return tf.train.SessionRunArgs(self._fetch(self._chained_update))
        return None

    def _choose_mode(self, ran):
        """The mode for runs of the ops `ran`: "woven", "chained" or "separate"
        (see the class docstring); logs the reason for "separate"."""
        name = type(self).__name__
        if not self._train_ops:
            logger.info(
                "%s: the graph's TRAIN_OP collection is empty (a Keras optimizer?); "
                "averages are updated in a separate session run after each step.", name)
            return "separate"
        missing = [op.name for op in self._train_ops if op not in ran]
        if missing:
            logger.info(
                "%s: the step does not run TRAIN_OP op(s) %s; averages are updated "
                "in a separate session run after each step.", name, missing)
            return "separate"
        return "woven" if self._woven is not None else "chained"

    def _can_count(self, ran):
        """Whether not-due runs can be told in Python: updates are periodic and
        each run of the ops `ran` adds exactly one to a global step no other
        task shares."""
        step = self._averager.global_step
        return (self._period > 1 and "/job:ps" not in step.device
                and adds_one(ran, step))

    def after_run(self, run_context, run_values):
        if self._mode == "woven":
            return
        if self._skip:
            self._next_step += 1
            return
        if self._mode == "chained":
            results = run_values.results
        else:
            results = run_context.session.run(self._fetch(self._separate_update))
        if self._counting:
            self._check_count(int(results[1]))

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
        self._next_step = step + 1


class ExponentialMovingAverageHook(_AveragingHook):
    """Keeps exponential moving averages of model variables during training.

    After each training step the average `a` of each selected weight `w` becomes

        a <- decay_t * a + (1 - decay_t) * w,
        decay_t = min(decay, (1 + n) / (10 + n))   (num_updates=True)

    where `n` is the global step that the step produced. The averages live in
    variables named `<variable>/ExponentialMovingAverage`, are saved in the
    Estimator's checkpoints and restored when training resumes.

    When the graph's `TRAIN_OP` collection names the training ops (every
    `tf.compat.v1.train.Optimizer` adds its apply op there), the update runs in
    the same session run as the step, ordered after those ops and after
    `UPDATE_OPS`; when that collection is the single global-step increment of
    `minimize(..., global_step=...)`, `begin()` orders the update before the
    increment and the hook fetches nothing. Otherwise (a Keras optimizer, say)
    it runs in a separate session run right after each step, and the hook logs
    that once. With `every_n_steps=k` the hook leaves not-due runs alone when
    it can count steps (see `_AveragingHook`).

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

    Raises:
      TypeError, ValueError: for bad arguments, at construction.
      RuntimeError: in `begin()`, when the graph has no global step.
    """

    _make_averager = _averaging.ExponentialMovingAverager

    def __init__(self, decay=0.999, *, num_updates=True, zero_debias=False, variables=None,
                 include=None, exclude=None, every_n_steps=1,
                 name=_averaging.EMA_NAME, skip_nonfinite=False):
        super(ExponentialMovingAverageHook, self).__init__(_averaging.EmaOptions(
            decay=decay, num_updates=num_updates, zero_debias=zero_debias,
            variables=variables, include=include, exclude=exclude,
            every_n_steps=every_n_steps, name=name, skip_nonfinite=skip_nonfinite))


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
    the same mean. The update runs in the step's session run or right after
    it, as for `ExponentialMovingAverageHook`.

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
      RuntimeError: in `begin()`, when the graph has no global step.
    """

    _make_averager = _averaging.StochasticWeightAverager

    def __init__(self, start_step, average_period=1, *, variables=None, include=None,
                 exclude=None, name=_averaging.SWA_NAME):
        super(StochasticWeightAveragingHook, self).__init__(_averaging.SwaOptions(
            start_step=start_step, average_period=average_period, variables=variables,
            include=include, exclude=exclude, name=name))
