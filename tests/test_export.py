"""SavedModels that serve the averages: export_saved_model, averaged_estimator's
export methods (every mode) and the averaged exporters in train_and_evaluate."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, EMA, FEATURES, LOADERS, estimator, input_fn, linear_model_fn, load,
                      run_config, serve, serving_input_receiver_fn, tf1, trained_with_hook)

TRAIN, PREDICT = tf.estimator.ModeKeys.TRAIN, tf.estimator.ModeKeys.PREDICT


def _predictions(checkpoint, suffix):
    """Numpy predictions of the linear model from a checkpoint's (averaged) weights."""
    return DATA[0] @ load(checkpoint, "linear/w" + suffix) + load(checkpoint, "linear/b" + suffix)


def _variables(export_dir):
    path = os.path.join(export_dir.decode(), "variables", "variables")
    return sorted(name for name, _ in tf.train.list_variables(path))


def _size(export_dir):
    folder = os.path.join(export_dir.decode(), "variables")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def _supervised_input_receiver_fn():
    """A TRAIN-mode receiver: features and labels fed as they are."""
    with tf.Graph().as_default():
        return tf.estimator.experimental.build_raw_supervised_input_receiver_fn(
            tf1.placeholder(tf.float32, [None, FEATURES], name="x"),
            tf1.placeholder(tf.float32, [None, 1], name="y"))


supervised_input_receiver_fn = _supervised_input_receiver_fn()


TRAIN_AND_PREDICT = {TRAIN: supervised_input_receiver_fn, PREDICT: serving_input_receiver_fn}

EXPORTS = {
    "export_saved_model": lambda est, base: estimator_ema.export_saved_model(
        est, base, serving_input_receiver_fn),
    "averaged_estimator": lambda est, base: estimator_ema.averaged_estimator(
        est).export_saved_model(base, serving_input_receiver_fn),
    "averaged_estimator-all-modes": lambda est, base: estimator_ema.averaged_estimator(
        est).experimental_export_all_saved_models(
            base, {tf.estimator.ModeKeys.PREDICT: serving_input_receiver_fn}),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("how", sorted(EXPORTS))
def test_serves_the_averages(hook_trained, model_dir, tmp_path, how, loader):
    export_dir = EXPORTS[how](hook_trained, str(tmp_path / "export"))
    np.testing.assert_allclose(serve(export_dir, DATA[0], loader),
                               _predictions(model_dir, "/" + EMA), atol=1e-5)


@pytest.mark.parametrize("how", sorted(EXPORTS))
def test_saved_model_holds_plain_names_only(hook_trained, model_dir, tmp_path, how):
    export_dir = EXPORTS[how](hook_trained, str(tmp_path / "export"))
    assert _variables(export_dir) == ["global_step", "linear/b", "linear/w"]
    variables = os.path.join(export_dir.decode(), "variables", "variables")
    for var in ["linear/b", "linear/w"]:
        np.testing.assert_array_equal(load(variables, var), load(model_dir, var + "/" + EMA))
    plain = hook_trained.export_saved_model(str(tmp_path / "plain"), serving_input_receiver_fn)
    assert _size(export_dir) == _size(plain)


@pytest.mark.parametrize("loader", LOADERS)
def test_plain_export_of_a_hook_trained_model_serves_the_raw_weights(hook_trained, model_dir,
                                                                     tmp_path, loader):
    export_dir = hook_trained.export_saved_model(str(tmp_path / "plain"),
                                                 serving_input_receiver_fn)
    assert _variables(export_dir) == ["global_step", "linear/b", "linear/w"]
    np.testing.assert_allclose(serve(export_dir, DATA[0], loader),
                               _predictions(model_dir, ""), atol=1e-5)


def test_checkpoint_path_selects_the_checkpoint(model_dir, tmp_path):
    trained_with_hook(model_dir, steps=5)
    est = trained_with_hook(model_dir, steps=5)
    older = os.path.join(str(model_dir), "model.ckpt-5")
    export_dir = estimator_ema.export_saved_model(est, str(tmp_path / "export"),
                                                  serving_input_receiver_fn,
                                                  checkpoint_path=older)
    expected = _predictions(older, "/" + EMA)
    assert not np.allclose(expected, _predictions(str(model_dir), "/" + EMA))
    np.testing.assert_allclose(serve(export_dir, DATA[0], "loader.load"), expected, atol=1e-5)


def _train_graph_weights(export_dir):
    """`(w, b)` as the SavedModel's TRAIN meta graph loads them."""
    with tf1.Session(graph=tf.Graph()) as session:
        tf1.saved_model.loader.load(session, ["train"], export_dir.decode())
        variables = {v.op.name: v
                     for v in session.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}
        return session.run([variables["linear/w"], variables["linear/b"]])


def _assert_train_graph_holds_the_averages(export_dir, checkpoint):
    for value, var in zip(_train_graph_weights(export_dir), ["linear/w", "linear/b"]):
        np.testing.assert_array_equal(value, load(checkpoint, var + "/" + EMA))


@pytest.mark.parametrize("how", ["export_saved_model", "averaged_estimator"])
def test_train_mode_export_holds_the_averages(hook_trained, model_dir, tmp_path, how):
    base = str(tmp_path / "export")
    if how == "export_saved_model":
        export_dir = estimator_ema.export_saved_model(
            hook_trained, base, supervised_input_receiver_fn, experimental_mode=TRAIN)
    else:
        export_dir = estimator_ema.averaged_estimator(hook_trained).export_saved_model(
            base, supervised_input_receiver_fn, experimental_mode=TRAIN)
    _assert_train_graph_holds_the_averages(export_dir, model_dir)


@pytest.mark.parametrize("how", ["hook", "with_ema", "with_ema-plain-estimator"])
def test_every_mode_exported_serves_the_averages(model_dir, tmp_path, how):
    """TRAIN and PREDICT in one SavedModel: the variables are saved from the TRAIN
    graph, and every meta graph loads the averages, through averaged_estimator
    or straight from the Estimator of a with_ema model_fn."""
    if how == "hook":
        est = trained_with_hook(model_dir)
    else:
        est = estimator(model_dir, model_fn=estimator_ema.with_ema(linear_model_fn, decay=0.8))
        est.train(input_fn, steps=10)
    if how != "with_ema-plain-estimator":
        est = estimator_ema.averaged_estimator(est)
    export_dir = est.experimental_export_all_saved_models(
        str(tmp_path / "export"), TRAIN_AND_PREDICT)
    expected = _predictions(str(model_dir), "/" + EMA)
    assert not np.allclose(expected, _predictions(str(model_dir), ""), atol=1e-4)
    np.testing.assert_allclose(serve(export_dir, DATA[0], "loader.load"), expected, atol=1e-5)
    _assert_train_graph_holds_the_averages(export_dir, model_dir)


def test_checkpoint_path_of_another_model_dir(hook_trained, model_dir, tmp_path):
    export_dir = estimator_ema.export_saved_model(
        estimator(tmp_path / "fresh"), str(tmp_path / "export"), serving_input_receiver_fn,
        checkpoint_path=str(model_dir))
    np.testing.assert_allclose(serve(export_dir, DATA[0], "loader.load"),
                               _predictions(model_dir, "/" + EMA), atol=1e-5)


def _failing_serving_input_receiver_fn():
    raise RuntimeError("serving input failed")


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_the_temporary_checkpoint_is_removed(hook_trained, tmp_path, monkeypatch, outcome):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    if outcome == "success":
        estimator_ema.export_saved_model(hook_trained, str(tmp_path / "export"),
                                         serving_input_receiver_fn)
    else:
        with pytest.raises(RuntimeError, match="serving input failed"):
            estimator_ema.export_saved_model(hook_trained, str(tmp_path / "export"),
                                             _failing_serving_input_receiver_fn)
    assert os.listdir(str(temporary)) == []


def _eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(32)


def _train_and_evaluate(model_dir, exporters):
    """10 steps of the linear model with the hook, evaluated and exported at 5 and 10."""
    est = estimator(model_dir, config=run_config(save_checkpoints_steps=5))
    train_spec = tf.estimator.TrainSpec(
        input_fn, max_steps=10, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    eval_spec = tf.estimator.EvalSpec(_eval_input_fn, steps=1, exporters=exporters,
                                      start_delay_secs=0, throttle_secs=0)
    tf.estimator.train_and_evaluate(est, train_spec, eval_spec)
    assert load(model_dir, "global_step") == 10


def _exports(model_dir, name):
    """The export directories of exporter `name`, oldest first."""
    base = os.path.join(str(model_dir), "export", name)
    return [os.path.join(base, d).encode() for d in sorted(os.listdir(base))]


def test_averaged_exporter_in_train_and_evaluate(model_dir):
    exporter = estimator_ema.AveragedExporter("averaged", serving_input_receiver_fn,
                                              exports_to_keep=1)
    _train_and_evaluate(model_dir, [exporter])
    exports = _exports(model_dir, "averaged")
    assert len(exports) == 1
    assert _variables(exports[0]) == ["global_step", "linear/b", "linear/w"]
    np.testing.assert_allclose(serve(exports[0], DATA[0], "loader.load"),
                               _predictions(model_dir, "/" + EMA), atol=1e-5)


def test_averaged_best_and_final_exporters_in_train_and_evaluate(model_dir):
    best = estimator_ema.AveragedBestExporter("best", serving_input_receiver_fn)
    final = estimator_ema.AveragedFinalExporter("final", serving_input_receiver_fn)
    _train_and_evaluate(model_dir, [best, final])
    checkpoints = {step: os.path.join(str(model_dir), "model.ckpt-%d" % step) for step in [5, 10]}
    # The Estimator evaluates the raw weights (the hook's model_fn is plain):
    # the best checkpoint is the one whose raw weights have the lower loss.
    losses = {step: np.mean((_predictions(path, "") - DATA[1]) ** 2)
              for step, path in checkpoints.items()}
    best_step = min(losses, key=losses.get)
    exported = {}
    for name in ["best", "final"]:
        export_dir = _exports(model_dir, name)[-1]
        assert _variables(export_dir) == ["global_step", "linear/b", "linear/w"]
        exported[name] = serve(export_dir, DATA[0], "loader.load")
    np.testing.assert_allclose(exported["best"], _predictions(checkpoints[best_step], "/" + EMA),
                               atol=1e-5)
    np.testing.assert_allclose(exported["final"], _predictions(checkpoints[10], "/" + EMA),
                               atol=1e-5)
    assert len(_exports(model_dir, "final")) == 1


EXPORTERS = ["AveragedBestExporter", "AveragedExporter", "AveragedFinalExporter"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("average_name, error, message", [
    (3, TypeError, r"'average_name' must be a non-empty string \(got 3\)\."),
    ("a b", ValueError, r"'average_name' must be a non-empty string of letters, digits, '_', "
                        r"'\.' or '-' \(got 'a b'\)\."),
], ids=["int", "space"])
def test_averaged_exporter_bad_average_name(exporter, average_name, error, message):
    with pytest.raises(error, match=message):
        getattr(estimator_ema, exporter)("x", serving_input_receiver_fn,
                                         average_name=average_name)


def test_export_without_averages(model_dir, tmp_path):
    est = estimator(model_dir)
    est.train(input_fn, steps=1)
    with pytest.raises(ValueError, match=r"has no averages named 'ExponentialMovingAverage'\."):
        estimator_ema.export_saved_model(est, str(tmp_path / "export"),
                                         serving_input_receiver_fn)
    assert not (tmp_path / "export").exists()


def test_export_without_a_checkpoint(model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'estimator.model_dir' is neither a checkpoint nor a "
                                         r"model_dir \(got '%s'\)\." % model_dir):
        estimator_ema.export_saved_model(estimator(model_dir), str(tmp_path / "export"),
                                         serving_input_receiver_fn)


def test_export_bad_checkpoint_path(hook_trained, tmp_path):
    with pytest.raises(ValueError, match=r"'checkpoint_path' is neither a checkpoint nor a "
                                         r"model_dir \(got '/no/such/ckpt'\)\."):
        estimator_ema.export_saved_model(hook_trained, str(tmp_path / "export"),
                                         serving_input_receiver_fn,
                                         checkpoint_path="/no/such/ckpt")


def test_export_needs_an_estimator(tmp_path):
    with pytest.raises(TypeError, match=r"'estimator' must be a tf.estimator.Estimator or a "
                                        r"tf.compat.v1.estimator.Estimator \(got None\)\."):
        estimator_ema.export_saved_model(None, str(tmp_path), serving_input_receiver_fn)
