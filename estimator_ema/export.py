"""Estimators and exports that use the averaged weights.

A SavedModel from here holds the averages under the plain variable names and
no average variables. `Estimator.export_saved_model` both restores and saves
with the scaffold's saver; the averaged Estimator's saver
(`CheckpointAveragesSaver`) restores each variable from its average and saves
under the plain names, so one export writes the averages where serving code
expects the weights.
"""

from estimator_ema import _checks, _options, checkpoints
from estimator_ema._compat import tf, tf_estimator
from estimator_ema._scaffolds import CheckpointAveragesSaver, replace_scaffold


class _AveragedEstimator(tf_estimator.Estimator):
    """See `averaged_estimator`."""

    def __init__(self, estimator, name):
        self._source_estimator = estimator
        self._exporting = False
        model_fn = estimator.model_fn

        def averaged_model_fn(features, labels, mode, config):
            # TRAIN is built here only to export it (experimental_mode=TRAIN).
            if mode == tf_estimator.ModeKeys.TRAIN and not self._exporting:
                raise ValueError("averaged_estimator() is for evaluate, predict and export; "
                                 "train the original estimator.")
            spec = model_fn(features, labels, mode, config)
            saver = CheckpointAveragesSaver(
                tf.get_default_graph().get_collection(tf.GraphKeys.GLOBAL_VARIABLES), name)
            return spec._replace(scaffold=replace_scaffold(spec.scaffold, saver=saver,
                                                           init_fn=self._no_checkpoint))

        super(_AveragedEstimator, self).__init__(averaged_model_fn, model_dir=estimator.model_dir,
                                                 config=estimator.config)

    def _no_checkpoint(self, session):
        """Runs when a session starts from initializers instead of a checkpoint
        (predict without one): there are no averages to use."""
        raise ValueError("averaged_estimator() found no checkpoint to take the averages from: "
                         "'estimator.model_dir' has none (got %r); pass 'checkpoint_path'."
                         % (self.model_dir,))

    def _export_all_saved_models(self, *args, **kwargs):
        self._exporting = True
        try:
            return super(_AveragedEstimator, self)._export_all_saved_models(*args, **kwargs)
        finally:
            self._exporting = False


def averaged_estimator(estimator, *, name=_options.EMA_NAME):
    """An Estimator over the same model_dir whose evaluate/predict/export use the averages.

    The returned Estimator builds the original model_fn and restores every
    global variable from the checkpoint it evaluates, predicts with or exports
    (the model_dir's latest, or `checkpoint_path=`): from its average
    (`<variable>/<name>`) where the checkpoint has one, from the variable
    itself otherwise (optimizer slots that a model_fn builds in EVAL mode too,
    the global step). Its `export_saved_model` and
    `experimental_export_all_saved_models` write SavedModels that hold the
    averages under the plain variable names, in every mode exported (TRAIN
    and EVAL too). It is the way to evaluate and serve a model trained with
    `ExponentialMovingAverageHook`:

        averaged = estimator_ema.averaged_estimator(estimator)
        averaged.evaluate(eval_input_fn)
        averaged.predict(predict_input_fn, checkpoint_path="/models/run1/model.ckpt-500")
        averaged.export_saved_model("/exports", serving_input_receiver_fn)

    Args:
      estimator: a `tf.estimator.Estimator` or `tf.compat.v1.estimator.Estimator`
        (canned Estimators included) whose model_dir has checkpoints, or to
        be used with `checkpoint_path=`.
      name: the averages' suffix, `ExponentialMovingAverage` by default.

    Returns:
      A `tf.estimator.Estimator`. Its `train` raises ValueError; its evaluate,
      predict and export raise ValueError when the checkpoint has no averages
      named `name` for the model's variables, or when there is no checkpoint.

    Raises:
      TypeError: `estimator` is not an Estimator, `name` not a string.
      ValueError: a bad `name`.
    """
    _checks.check_estimator(estimator)
    name = _checks.check_name(name)
    if isinstance(estimator, _AveragedEstimator):
        estimator = estimator._source_estimator
    return _AveragedEstimator(estimator, name)


def export_saved_model(estimator, export_dir_base, serving_input_receiver_fn, *,
                       checkpoint_path=None, name=_options.EMA_NAME, **kwargs):
    """Exports a SavedModel that serves the averages under the plain variable names.

    Exports through `averaged_estimator(estimator, name=name)`: each variable
    is restored from its average and saved under its plain name, in every
    mode exported (`experimental_mode=tf.estimator.ModeKeys.TRAIN` too). The
    SavedModel has no average variables (it is the size of a plain export)
    and loads with `tf.saved_model.load` in TF 2 and
    `tf.compat.v1.saved_model.loader.load` in TF 1. Plain
    `estimator.export_saved_model` on a model trained with
    `ExponentialMovingAverageHook` exports the raw weights.

    Example:

        export_dir = estimator_ema.export_saved_model(
            estimator, "/exports", serving_input_receiver_fn)

    Args:
      estimator: a `tf.estimator.Estimator` or `tf.compat.v1.estimator.Estimator`.
      export_dir_base: str, the directory in which a timestamped export is made.
      serving_input_receiver_fn: as for `Estimator.export_saved_model`.
      checkpoint_path: str or None, the checkpoint (or model_dir) to export,
        which need not be in `estimator.model_dir`; None for the latest
        checkpoint in `estimator.model_dir`.
      name: str, the averages' suffix.
      **kwargs: `assets_extra`, `as_text`, `experimental_mode`, passed on to
        `Estimator.export_saved_model`.

    Returns:
      The export directory, as bytes (as `Estimator.export_saved_model` returns it).

    Raises:
      TypeError: `estimator` is not an Estimator, `name` not a string.
      ValueError: no checkpoint, no averages named `name`, or what
        `Estimator.export_saved_model` raises.
    """
    averaged = averaged_estimator(estimator, name=name)
    if checkpoint_path is None:
        checkpoint = checkpoints.resolve_checkpoint(estimator.model_dir, "estimator.model_dir")
    else:
        checkpoint = checkpoints.resolve_checkpoint(checkpoint_path, "checkpoint_path")
    # Checked before Estimator creates the export directory: nothing is written.
    checkpoints.require_averages(
        checkpoint, [key for key, _ in tf.train.list_variables(checkpoint)], name)
    return averaged.export_saved_model(export_dir_base, serving_input_receiver_fn,
                                       checkpoint_path=checkpoint, **kwargs)


class _ExportsTheAverages(object):
    """Mixin for a `tf.estimator.Exporter` class: its exports hold the averages.

    `export` hands the exporter `averaged_estimator(estimator, name=average_name)`,
    so the evaluated checkpoint's averages are exported as `export_saved_model`
    exports them, under the plain variable names.
    """

    def __init__(self, name, serving_input_receiver_fn, *, average_name=_options.EMA_NAME,
                 **kwargs):
        self._average_name = _checks.check_name(average_name, "average_name")
        super(_ExportsTheAverages, self).__init__(name, serving_input_receiver_fn, **kwargs)

    def export(self, estimator, export_path, checkpoint_path, eval_result,
               is_the_final_export):
        return super(_ExportsTheAverages, self).export(
            averaged_estimator(estimator, name=self._average_name), export_path,
            checkpoint_path, eval_result, is_the_final_export)


class AveragedExporter(_ExportsTheAverages, tf_estimator.LatestExporter):
    """A `LatestExporter` that exports the averages, for `EvalSpec(exporters=...)`.

    After each evaluation in `tf.estimator.train_and_evaluate` it exports the
    evaluated checkpoint's averages as `export_saved_model` does, under
    `<model_dir>/export/<name>/<timestamp>`, keeping the last `exports_to_keep`.

    Example:

        exporter = estimator_ema.AveragedExporter("averaged", serving_input_receiver_fn)
        eval_spec = tf.estimator.EvalSpec(eval_input_fn, exporters=[exporter])
        tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)

    Args:
      name: str, the exporter's name (the export subdirectory).
      serving_input_receiver_fn: as for `Estimator.export_saved_model`.
      average_name: str, the averages' suffix.
      **kwargs: `assets_extra`, `as_text`, `exports_to_keep` (default 5; None
        keeps all), as for `tf.estimator.LatestExporter`.

    Raises:
      TypeError, ValueError: for bad arguments, as `LatestExporter` and for
        `average_name`.
    """


class AveragedBestExporter(_ExportsTheAverages, tf_estimator.BestExporter):
    """A `BestExporter` that exports the averages, for `EvalSpec(exporters=...)`.

    After an evaluation in `tf.estimator.train_and_evaluate` whose result is the
    best so far by `compare_fn` (by default the smallest `loss`; earlier
    evaluations are read from the event files in the model_dir), it exports
    the evaluated checkpoint's averages under `<model_dir>/export/<name>/<timestamp>`.
    The result compared is the Estimator's own evaluation: of the averages
    for a model_fn decorated with `with_ema` / `with_swa`, of the raw weights
    for a model trained with the hook.

    Example:

        exporter = estimator_ema.AveragedBestExporter("best", serving_input_receiver_fn)
        eval_spec = tf.estimator.EvalSpec(eval_input_fn, exporters=[exporter])

    Args:
      name: str, the exporter's name (the export subdirectory).
      serving_input_receiver_fn: as for `Estimator.export_saved_model`.
      average_name: str, the averages' suffix.
      **kwargs: `event_file_pattern`, `compare_fn`, `assets_extra`, `as_text`,
        `exports_to_keep`, as for `tf.estimator.BestExporter`.

    Raises:
      TypeError, ValueError: for bad arguments, as `BestExporter` and for
        `average_name`.
    """


class AveragedFinalExporter(_ExportsTheAverages, tf_estimator.FinalExporter):
    """A `FinalExporter` that exports the averages, for `EvalSpec(exporters=...)`.

    After the last evaluation of `tf.estimator.train_and_evaluate` it exports
    the final checkpoint's averages under `<model_dir>/export/<name>/<timestamp>`.

    Example:

        exporter = estimator_ema.AveragedFinalExporter("final", serving_input_receiver_fn)
        eval_spec = tf.estimator.EvalSpec(eval_input_fn, exporters=[exporter])

    Args:
      name: str, the exporter's name (the export subdirectory).
      serving_input_receiver_fn: as for `Estimator.export_saved_model`.
      average_name: str, the averages' suffix.
      **kwargs: `assets_extra`, `as_text`, as for `tf.estimator.FinalExporter`.

    Raises:
      TypeError, ValueError: for bad arguments, as `FinalExporter` and for
        `average_name`.
    """
