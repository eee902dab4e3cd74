"""The Saver that saves the averages and restores checkpoints written without them.

Estimator saves and restores training checkpoints with the graph's default
Saver (the one in the `SAVERS` collection, which Estimator adds, deferred, when
the model_fn brings none). The hooks and the decorators replace it with an
`AdoptingSaver` over the same variables plus every averager's state, with the
same settings, so that

- a model_fn that put its own Saver in `SAVERS` still saves the averages, and
- training that adds averaging to a model_dir whose checkpoints have none
  resumes from them, with the averages starting from the restored weights;
- a lazy average (see `_rows`) is saved as its plain values, computed as the
  Saver saves, under the stock key: checkpoints hold no lazy bookkeeping, and
  one written without lazy rows restores as one written with them.
"""

import logging

from estimator_ema import _graphs, _variables
from estimator_ema._compat import tf
from estimator_ema._rows import SaveableObject
from estimator_ema.checkpoints import checkpoint_key, saver_var_list

logger = logging.getLogger("estimator_ema")


class _Averaged(object):
    """One averager's state: its variables, what Savers save of them (`saved`:
    lazy averages as saveables of their plain values) and its checkpoint
    keys, the ops that start it as a new run does, and (once built) the
    Saver of the state alone."""

    def __init__(self, averager, state):
        self.name = averager.options.name
        self.state = state
        self.saved = averager.saveables(state)
        self.keys = {_key(item) for item in self.saved}
        self.reset = tf.variables_initializer(state)
        self.start = averager.initialize_from_weights()
        self.restorer = None


def _key(item):
    """The checkpoint key of a variable or a saveable."""
    return item.specs[0].name if isinstance(item, SaveableObject) else checkpoint_key(item)


class AdoptingSaver(tf.train.Saver):
    """A default Saver that also saves, and can start, the averagers' state.

    `restore` of a checkpoint that holds each averager's state is a plain
    restore. For an averager none of whose state is in the checkpoint (one
    written before averaging began), it restores everything else and starts
    that state as a new run does: each average from its restored weight,
    zero-debias helpers and the SWA count at their start values; it logs that
    once per averager. A checkpoint that holds part of an averager's state, or
    lacks a model variable, fails as a plain restore does.

    Build it with `replacing(saver, averaged)`, before the graph is finalized.
    """

    def __init__(self, var_list, averaged, **settings):
        # Set first: a Saver over a given var_list builds in its constructor.
        self._averaged = averaged
        self._model_restorer = None
        super(AdoptingSaver, self).__init__(var_list, defer_build=var_list is None, **settings)

    @classmethod
    def replacing(cls, saver, averaged):
        """An AdoptingSaver with `saver`'s variables and settings that also saves
        the state of each of `averaged` (built now if `saver` has a var_list)."""
        var_list = saver._var_list
        if isinstance(var_list, dict):
            state = {id(v) for a in averaged for v in a.state}
            var_list = _without(var_list, state)
            var_list.update(saver_var_list((checkpoint_key(v), v) for a in averaged
                                           for v in a.saved if not isinstance(v, SaveableObject)))
            var_list.update((v.name, v) for a in averaged for v in a.saved
                            if isinstance(v, SaveableObject))
        elif var_list is not None:
            var_list = _with_state(var_list, averaged)
        return cls(var_list, averaged, reshape=saver._reshape, sharded=saver._sharded,
                   max_to_keep=saver._max_to_keep,
                   keep_checkpoint_every_n_hours=saver._keep_checkpoint_every_n_hours,
                   name=saver._name, restore_sequentially=saver._restore_sequentially,
                   allow_empty=saver._allow_empty, write_version=saver._write_version,
                   pad_step_number=saver._pad_step_number,
                   save_relative_paths=saver._save_relative_paths, filename=saver._filename)

    def build(self):
        if self._is_built:
            return
        if self._var_list is None:
            self._var_list = _with_state(tf.global_variables()
                                         + tf.get_collection(tf.GraphKeys.SAVEABLE_OBJECTS),
                                         self._averaged)
        super(AdoptingSaver, self).build()
        state = {id(v) for averaged in self._averaged for v in averaged.saved}
        self._model_restorer = self._restorer(_without(self._var_list, state))
        for averaged in self._averaged:
            averaged.restorer = self._restorer(averaged.saved)

    def _restorer(self, var_list):
        restorer = tf.train.Saver(var_list, reshape=self._reshape, sharded=self._sharded,
                                  restore_sequentially=self._restore_sequentially,
                                  allow_empty=True, write_version=self._write_version)
        _graphs.set_aside(restorer, tf.get_default_graph())
        return restorer

    def restore(self, sess, save_path):
        keys = self._keys(save_path)
        absent = [a for a in self._averaged if keys is not None and not a.keys & keys]
        if not absent:
            return super(AdoptingSaver, self).restore(sess, save_path)
        self._model_restorer.restore(sess, save_path)
        for averaged in self._averaged:
            if averaged in absent:
                sess.run(averaged.reset)
                sess.run(averaged.start)
                logger.info("%s: checkpoint %s has no averages (it was written before "
                            "averaging began); training resumes from its weights and the "
                            "averages start from them.", averaged.name, save_path)
            else:
                averaged.restorer.restore(sess, save_path)
        return None

    def _keys(self, save_path):
        """The keys of checkpoint `save_path` (None if there are no averagers or it
        cannot be read: the plain restore then reports it)."""
        if save_path is None or not self._averaged:
            return None
        try:
            return set(tf.train.NewCheckpointReader(save_path).get_variable_to_shape_map())
        except (tf.errors.OpError, ValueError):
            return None


def _with_state(var_list, averaged):
    """The list `var_list` with each of `averaged`'s state as Savers save it
    (in place of any of its variables already there)."""
    state = {id(v) for a in averaged for v in a.state}
    return _without(var_list, state) + [v for a in averaged for v in a.saved]


def _without(var_list, excluded):
    """`var_list` (a list or a Saver dict) without the variables whose id is in `excluded`."""
    if isinstance(var_list, dict):
        kept = {}
        for key, value in var_list.items():
            if isinstance(value, list):
                value = [v for v in value if id(v) not in excluded]
                if value:
                    kept[key] = value
            elif id(value) not in excluded:
                kept[key] = value
        return kept
    return [v for v in var_list if id(v) not in excluded]


def install(graph, averager):
    """Makes the graph's default Saver save `averager`'s state and start it when a
    checkpoint has none (see `AdoptingSaver`).

    The Saver in the `SAVERS` collection (Estimator's default, or one the
    model_fn put there) is replaced by an `AdoptingSaver` with its variables and
    settings. With no Saver there the scaffold's own saver is used, which
    this cannot change.

    Raises:
      ValueError: the collection holds something other than a
        `tf.compat.v1.train.Saver`, or several Savers.
    """
    _install(graph, _Averaged(averager, _variables.state_variables(averager, graph)))


def _install(graph, averaged):
    savers = graph.get_collection_ref(tf.GraphKeys.SAVERS)
    if not savers:
        return
    if len(savers) > 1 or not isinstance(savers[0], tf.train.Saver):
        raise ValueError(
            "The graph's SAVERS collection holds %r; averaging needs it to hold one "
            "tf.compat.v1.train.Saver (or nothing), which it extends to save the averages. "
            "Leave the collection to Estimator, or put one plain Saver there." % (savers,))
    saver = savers[0]
    if saver._is_built:
        _graphs.set_aside(saver, graph)
        if saver._var_list is not None:
            logger.info("%s: the graph's default Saver was built by the model_fn; it is "
                        "replaced by one with the same variables and settings that also saves "
                        "the averages.", averaged.name)
    previous = list(saver._averaged) if isinstance(saver, AdoptingSaver) else []
    savers[0] = AdoptingSaver.replacing(saver, previous + [averaged])


class _InstallHook(tf.train.SessionRunHook):
    """Puts the state back among the global variables and installs the Saver, in
    the first `begin()` call: after Estimator's warm start and its default Saver;
    then warns of a Saver built before the averaging (`Averager.warn_of_savers`);
    when a session starts, refuses a Saver that saves lazy averages as they are kept.
    `averaged`: the state's `_Averaged` if built in the model_fn, else None."""

    def __init__(self, averager, state, averaged=None):
        self._averager = averager
        self._state = state
        self._averaged = averaged
        self._done = False

    def begin(self):
        if self._done:
            return
        self._done = True
        graph = tf.get_default_graph()
        variables = graph.get_collection_ref(tf.GraphKeys.GLOBAL_VARIABLES)
        listed = {id(v) for v in variables}
        variables.extend(v for v in self._state if id(v) not in listed)
        _install(graph, self._averaged or _Averaged(self._averager, self._state))
        self._averager.warn_of_savers()

    def after_create_session(self, session, coord):
        self._averager.check_savers()


def adopting_train_spec(spec, averager):
    """The decorator's TRAIN spec with the averager's Saver installed by a hook.

    Until that hook's `begin()` the averager's state is not in the
    `GLOBAL_VARIABLES` collection: Estimator's warm start, which runs between
    the model_fn and the hooks, selects among global variables for a list of
    patterns and would look for the averages in a checkpoint that has none.
    (A session that starts from scratch starts the averages from the weights
    anyway, after the warm start.) The hook is a chief hook, whose `begin()`
    runs before any other hook's, and a training hook for the other workers,
    where it runs after the hooks passed to `train()`.
    """
    graph = tf.get_default_graph()
    state = _variables.state_variables(averager, graph)
    variables = graph.get_collection_ref(tf.GraphKeys.GLOBAL_VARIABLES)
    hidden = {id(v) for v in state}
    variables[:] = [v for v in variables if id(v) not in hidden]
    if "training_chief_hooks" not in spec._fields:
        # A TPUEstimatorSpec: the model_fn runs in the TPU computation, so the
        # hook builds the ops that start the state, on the host.
        hook = _InstallHook(averager, state)
        return spec._replace(training_hooks=tuple(spec.training_hooks) + (hook,))
    # The ops that start the state are built here, in the model_fn's context (a
    # distribution strategy's replica context).
    hook = _InstallHook(averager, state, _Averaged(averager, state))
    return spec._replace(training_chief_hooks=(hook,) + tuple(spec.training_chief_hooks),
                         training_hooks=tuple(spec.training_hooks) + (hook,))
