"""A Saver of the user's own, besides the graph's default one, during training:
its checkpoints hold plain averages, or training refuses it with the way out."""

import logging
import os

import pytest
import tensorflow as tf

import estimator_ema
from conftest import EMA, run_config, tf1
from test_lazy_rows import check, embedding_model_fn, ids_input_fn, lazy_tables
from test_ordering import CheckpointReader, Recorder


class OwnSaverHook(tf1.train.SessionRunHook):
    """Saves after every other step into `<directory>/own` with a Saver built in
    begin(): a new default one, or (`default=True`) the graph's default Saver;
    reads the averages back."""

    def __init__(self, directory, default=False):
        self.directory = os.path.join(str(directory), "own")
        self.reader = CheckpointReader(self.directory, EMA)
        self.default = default

    def begin(self):
        self.saver = (tf1.get_collection(tf1.GraphKeys.SAVERS)[0] if self.default
                      else tf1.train.Saver())
        self.step = tf1.train.get_global_step()
        os.makedirs(self.directory, exist_ok=True)

    def after_run(self, run_context, run_values):
        session = run_context.session
        step = int(session.run(self.step))
        if step % 2 == 0:
            self.saver.save(session, os.path.join(self.directory, "model.ckpt"),
                            global_step=step)
            self.reader.after_save(session, step)


def train_with(model_dir, how, own):
    """Trains the embedding model with averaging, `own` running after the
    averaging's own hooks have begun; returns the Recorder."""
    model_fn, hooks = embedding_model_fn, []
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=0.8)
    else:
        hooks.append(estimator_ema.ExponentialMovingAverageHook(decay=0.8))
    est = tf.estimator.Estimator(model_fn, str(model_dir), params=dict(optimizer="sgd", parts=0),
                                 config=run_config(save_checkpoints_steps=2))
    recorder = Recorder()
    est.train(ids_input_fn, steps=9, hooks=hooks + [own, recorder])
    return recorder


@pytest.mark.parametrize("how", ["decorator", "hook"])
def test_a_saver_of_the_lazy_averages_as_kept_is_refused(tmp_path, caplog, how):
    caplog.set_level(logging.INFO, logger="estimator_ema")
    with pytest.raises(RuntimeError, match=(
            r"ExponentialMovingAverage: a Saver other than the graph's default one saves the "
            r"lazily averaged tables' averages as they are kept, not brought up to date "
            r"\(its save ops: save\S*/SaveV2\S*\).* or pass lazy_rows=False")):
        train_with(tmp_path, how, OwnSaverHook(tmp_path))
    assert lazy_tables(caplog) == ["embedding/table"]
    assert not os.listdir(os.path.join(str(tmp_path), "own"))


@pytest.mark.parametrize("how", ["decorator", "hook"])
def test_the_default_saver_saves_plain_averages_for_the_user(tmp_path, caplog, how):
    caplog.set_level(logging.INFO, logger="estimator_ema")
    own = OwnSaverHook(tmp_path, default=True)
    recorder = train_with(tmp_path / "model", how, own)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == "estimator_ema"]
    assert lazy_tables(caplog, own.directory) == ["embedding/table"]
    assert check(recorder, own.reader) == 4


def saver_in_model_fn(features, labels, mode, params):
    """The embedding model, whose chief saves every other step into
    `params["own"]` with a Saver built in the model_fn (before any averaging)."""
    spec = embedding_model_fn(features, labels, mode, params)
    saver = tf1.train.CheckpointSaverHook(params["own"], save_steps=2,
                                          saver=tf1.train.Saver(**params["saver_args"]))
    return spec._replace(training_chief_hooks=[saver])


BLIND = ("ExponentialMovingAverage: a Saver other than the graph's default one ('save') "
         "saves every averaged variable but none of the averages: it was built before the "
         "averaging (a tf.compat.v1.train.Saver() in the model_fn?), so checkpoints it saves "
         "hold no averages, and training resumed from one starts them again from the "
         "weights. To save, give tf.compat.v1.train.CheckpointSaverHook no saver (it then "
         "uses the graph's default Saver, which saves the averages) or build the Saver once "
         "training's hooks have begun.")


@pytest.mark.parametrize("how", ["decorator", "hook"])
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "dense"])
def test_a_saver_built_before_the_averaging_is_warned_of(tmp_path, caplog, how, lazy):
    # (It may be meant only to restore, in a Scaffold's init_fn say.)
    model_fn, hooks = saver_in_model_fn, []
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=0.8, lazy_rows=lazy)
    else:
        hooks.append(estimator_ema.ExponentialMovingAverageHook(decay=0.8, lazy_rows=lazy))
    own = os.path.join(str(tmp_path), "own")
    params = dict(optimizer="sgd", parts=2, own=own, saver_args=dict(sharded=True))
    est = tf.estimator.Estimator(model_fn, str(tmp_path / "model"), params=params,
                                 config=run_config())
    est.train(ids_input_fn, steps=3, hooks=hooks)
    assert [r.getMessage() for r in caplog.records if r.name == "estimator_ema"
            and r.levelno == logging.WARNING] == [BLIND]
    reader = tf1.train.NewCheckpointReader(tf.train.latest_checkpoint(own))
    assert not any(key.endswith(EMA) for key in reader.get_variable_to_shape_map())


def head_saver_in_model_fn(features, labels, mode, params):
    """The embedding model, whose chief saves its head alone with a Saver built
    in the model_fn."""
    spec = embedding_model_fn(features, labels, mode, params)
    head = tf1.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, "head/w")
    saver = tf1.train.CheckpointSaverHook(params["own"], save_steps=2,
                                          saver=tf1.train.Saver(head))
    return spec._replace(training_chief_hooks=[saver])


def test_a_saver_of_some_averaged_variables_built_before_the_averaging_is_left_alone(
        tmp_path, caplog):
    own = os.path.join(str(tmp_path), "own")
    est = tf.estimator.Estimator(estimator_ema.with_ema(head_saver_in_model_fn, decay=0.8),
                                 str(tmp_path / "model"), config=run_config(),
                                 params=dict(optimizer="sgd", parts=0, own=own))
    est.train(ids_input_fn, steps=3)
    reader = tf1.train.NewCheckpointReader(tf.train.latest_checkpoint(own))
    assert set(reader.get_variable_to_shape_map()) == {"head/w"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == "estimator_ema"]
