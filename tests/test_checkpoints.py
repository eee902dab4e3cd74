"""read_averages, restore_averages, write_averaged_checkpoint, warm_start_from_averages:
against the values `tf.train.load_variable` reads and numpy oracles."""

import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, EMA, SWA, TF_VERSION, ema_oracle, estimator, input_fn, linear_graph,
                      load, save_checkpoint, sgd_weights, tf1, trained_with_hook)
from estimator_ema import rewriting

LINEAR = ["linear/b", "linear/w"]


def _source(model_dir, kind):
    """The model_dir itself or its latest checkpoint prefix."""
    return str(model_dir) if kind == "model_dir" else tf.train.latest_checkpoint(str(model_dir))


def _keys(path):
    return sorted(name for name, _ in tf.train.list_variables(str(path)))


# read_averages

@pytest.mark.parametrize("kind", ["model_dir", "prefix"])
@pytest.mark.parametrize("name", [EMA, SWA], ids=["ema", "swa-name"])
def test_read_averages_matches_load_variable(model_dir, kind, name):
    trained_with_hook(model_dir, name=name)
    averages = estimator_ema.read_averages(_source(model_dir, kind), name=name)
    assert sorted(averages) == LINEAR
    for var in LINEAR:
        np.testing.assert_array_equal(averages[var], load(model_dir, var + "/" + name))


def test_read_averages_of_another_name_is_an_error(model_dir):
    trained_with_hook(model_dir, name=SWA)
    prefix = tf.train.latest_checkpoint(str(model_dir))
    with pytest.raises(ValueError, match=r"^Checkpoint '%s' has no averages named "
                                         r"'ExponentialMovingAverage'\.$" % prefix):
        estimator_ema.read_averages(str(model_dir))


@pytest.mark.parametrize("path, error, message", [
    (3, TypeError, r"'checkpoint_or_model_dir' must be a checkpoint prefix or a model_dir "
                   r"path \(got 3\)\."),
    ("/no/such/model", ValueError, r"'checkpoint_or_model_dir' is neither a checkpoint nor a "
                                   r"model_dir \(got '/no/such/model'\)\."),
], ids=["not-a-path", "missing"])
def test_read_averages_bad_path(path, error, message):
    with pytest.raises(error, match=message):
        estimator_ema.read_averages(path)


def test_read_averages_empty_directory(tmp_path):
    with pytest.raises(ValueError, match=r"'checkpoint_or_model_dir' is a directory with no "
                                         r"checkpoint \(got '%s'\)\." % tmp_path):
        estimator_ema.read_averages(str(tmp_path))


@pytest.mark.parametrize("name, error, message", [
    (1, TypeError, r"'name' must be a non-empty string \(got 1\)\."),
    ("a/b", ValueError, r"'name' must be a non-empty string of letters, digits, '_', '\.' or "
                        r"'-' \(got 'a/b'\)\."),
], ids=["int", "slash"])
def test_read_averages_bad_name(hook_trained, model_dir, name, error, message):
    with pytest.raises(error, match=message):
        estimator_ema.read_averages(str(model_dir), name=name)


# restore_averages

@pytest.mark.parametrize("finalize", [False, True], ids=["graph", "finalized-graph"])
def test_restore_averages_loads_the_averages(hook_trained, model_dir, finalize):
    graph, w, b = linear_graph()
    if finalize:
        graph.finalize()
    with tf1.Session(graph=graph) as session:
        restored = estimator_ema.restore_averages(session, str(model_dir))
        got_w, got_b, step = session.run([w, b, tf1.train.get_global_step(graph)])
    np.testing.assert_array_equal(got_w, load(model_dir, "linear/w/" + EMA))
    np.testing.assert_array_equal(got_b, load(model_dir, "linear/b/" + EMA))
    assert step == 10
    assert restored == {"linear/w": "linear/w/" + EMA, "linear/b": "linear/b/" + EMA,
                        "global_step": "global_step"}


def _optimizer(kind):
    if kind == "v1-adam":
        return tf1.train.AdamOptimizer(0.1)
    optimizers = tf.keras.optimizers
    return (getattr(optimizers, "legacy", None) or optimizers).Adam(0.1)


@pytest.mark.parametrize("kind", ["v1-adam", "keras-adam"])
def test_restore_averages_leaves_optimizer_state_alone(hook_trained, model_dir, kind):
    """A training graph's optimizer state (v1 Adam's beta1_power, a Keras
    optimizer's slots, iterations and hyperparameters) is not a model variable."""
    graph = tf.Graph()
    with graph.as_default():
        w = tf1.get_variable("linear/w", [3, 1], use_resource=kind == "keras-adam" or None)
        b = tf1.get_variable("linear/b", [1], use_resource=kind == "keras-adam" or None)
        loss = tf.reduce_sum(tf.square(tf.matmul(tf.ones([2, 3]), w) + b))
        step = tf1.train.get_or_create_global_step()
        optimizer = _optimizer(kind)
        if kind == "v1-adam":
            optimizer.minimize(loss, global_step=step)
        else:
            optimizer.apply_gradients(zip(tf.gradients(loss, [w, b]), [w, b]))
    names = {v.op.name for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}
    assert "beta1_power" in names if kind == "v1-adam" else "Adam/linear/w/m" in names
    with tf1.Session(graph=graph) as session:
        restored = estimator_ema.restore_averages(session, str(model_dir))
        np.testing.assert_array_equal(session.run(w), load(model_dir, "linear/w/" + EMA))
    assert restored == {"linear/w": "linear/w/" + EMA, "linear/b": "linear/b/" + EMA,
                        "global_step": "global_step"}


def keras_adam_model_fn(features, labels, mode):
    w = tf1.get_variable("linear/w", [3, 1], initializer=tf1.zeros_initializer(),
                         use_resource=True)
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    apply = _optimizer("keras-adam").apply_gradients(zip(tf.gradients(loss, [w]), [w]))
    with tf.control_dependencies([apply]):
        train_op = tf1.assign_add(tf1.train.get_or_create_global_step(), 1)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def test_drop_optimizer_slots_drops_a_keras_optimizers_state(model_dir, tmp_path):
    est = tf.estimator.Estimator(keras_adam_model_fn, str(model_dir))
    est.train(input_fn, steps=2, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    keys = _keys(model_dir)
    assert {"Adam/iter", "Adam/linear/w/m", "Adam/linear/w/v"} <= set(keys)
    out = estimator_ema.write_averaged_checkpoint(str(model_dir), str(tmp_path / "out" / "m"),
                                                  drop_optimizer_slots=True)
    assert _keys(out) == ["global_step", "linear/w"]


def test_restore_averages_explicit_variables(hook_trained, model_dir):
    graph, w, b = linear_graph()
    with tf1.Session(graph=graph) as session:
        session.run(b.initializer)
        before = session.run(b)
        estimator_ema.restore_averages(session, str(model_dir), [w])
        np.testing.assert_array_equal(session.run(w), load(model_dir, "linear/w/" + EMA))
        np.testing.assert_array_equal(session.run(b), before)


def test_restore_averages_strict_names_missing_averages(model_dir):
    trained_with_hook(model_dir, exclude="linear/b")
    graph, _, _ = linear_graph()
    with tf1.Session(graph=graph) as session:
        with pytest.raises(ValueError, match=r"has no averages named 'ExponentialMovingAverage' "
                                             r"for variable\(s\) \['linear/b'\]; pass "
                                             r"strict=False to restore their raw values\."):
            estimator_ema.restore_averages(session, str(model_dir))


def test_restore_averages_non_strict_falls_back_and_logs(model_dir, caplog):
    caplog.set_level(logging.INFO, logger="estimator_ema")
    trained_with_hook(model_dir, exclude="linear/b")
    graph, w, b = linear_graph()
    with tf1.Session(graph=graph) as session:
        estimator_ema.restore_averages(session, str(model_dir), strict=False)
        got_w, got_b = session.run([w, b])
    np.testing.assert_array_equal(got_w, load(model_dir, "linear/w/" + EMA))
    np.testing.assert_array_equal(got_b, load(model_dir, "linear/b"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("no average named 'ExponentialMovingAverage' for ['linear/b']" in m
               and "restored their raw values" in m for m in messages), messages


@pytest.mark.parametrize("dtype", [tf.int32, tf.float32], ids=["int", "float"])
def test_restore_averages_variable_not_in_checkpoint(hook_trained, model_dir, dtype):
    graph, _, _ = linear_graph()
    with graph.as_default():
        tf1.get_variable("extra", [2], dtype=dtype)
    with tf1.Session(graph=graph) as session:
        with pytest.raises(ValueError, match=r"has no value for variable\(s\) \['extra'\]\."):
            estimator_ema.restore_averages(session, str(model_dir))


def test_restore_averages_shape_mismatch(hook_trained, model_dir):
    graph = tf.Graph()
    with graph.as_default():
        tf1.get_variable("linear/w", [2, 1])
    with tf1.Session(graph=graph) as session:
        with pytest.raises(ValueError, match=r"holds linear/w/ExponentialMovingAverage with "
                                             r"shape \[3, 1\], but variable linear/w has shape "
                                             r"\[2, 1\]\."):
            estimator_ema.restore_averages(session, str(model_dir))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"session": "sess"}, TypeError, r"'session' must be a tf.compat.v1.Session "
                                     r"\(got 'sess'\)\."),
    ({"strict": 1}, TypeError, r"'strict' must be True or False \(got 1\)\."),
    ({"variables": "linear/w"}, TypeError, r"'variables' must be None, a list of variables or "
                                           r"a callable returning one \(got 'linear/w'\)\."),
], ids=["session", "strict", "variables"])
def test_restore_averages_bad_arguments(hook_trained, model_dir, kwargs, error, message):
    graph, _, _ = linear_graph()
    with tf1.Session(graph=graph) as session:
        arguments = dict({"session": session, "checkpoint_or_model_dir": str(model_dir)},
                         **kwargs)
        with pytest.raises(error, match=message):
            estimator_ema.restore_averages(**arguments)


# write_averaged_checkpoint

@pytest.mark.parametrize("kind", ["model_dir", "prefix"])
def test_write_averaged_checkpoint_values(hook_trained, model_dir, tmp_path, kind):
    out = str(tmp_path / "averaged" / "model.ckpt-10")
    written = estimator_ema.write_averaged_checkpoint(_source(model_dir, kind), out)
    assert written == out
    assert _keys(out) == ["global_step"] + LINEAR
    for var in LINEAR:
        np.testing.assert_array_equal(load(out, var), load(model_dir, var + "/" + EMA))
    assert load(out, "global_step") == 10
    assert tf.train.latest_checkpoint(str(tmp_path / "averaged")) == out
    assert sorted(os.listdir(str(tmp_path / "averaged"))) == [
        "checkpoint", "model.ckpt-10.data-00000-of-00001", "model.ckpt-10.index"]


def test_written_checkpoint_evaluates_as_the_averages(hook_trained, model_dir, tmp_path):
    out_dir = tmp_path / "averaged"
    estimator_ema.write_averaged_checkpoint(str(model_dir), str(out_dir / "model.ckpt-10"))
    w, b = load(model_dir, "linear/w/" + EMA), load(model_dir, "linear/b/" + EMA)
    expected = np.mean((DATA[0] @ w + b - DATA[1]) ** 2)

    def eval_input_fn():
        return tf.data.Dataset.from_tensor_slices(DATA).batch(32)
    loss = estimator(out_dir).evaluate(eval_input_fn)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_zero_debias_helpers_are_dropped(model_dir, tmp_path):
    trained_with_hook(model_dir, zero_debias=True)
    assert "linear/w/%s/biased" % EMA in _keys(model_dir)
    out = str(tmp_path / "out" / "model.ckpt")
    estimator_ema.write_averaged_checkpoint(str(model_dir), out)
    assert _keys(out) == ["global_step"] + LINEAR
    np.testing.assert_array_equal(load(out, "linear/w"), load(model_dir, "linear/w/" + EMA))


@pytest.mark.parametrize("drop", [False, True], ids=["keep-slots", "drop-slots"])
def test_optimizer_slots(tmp_path, drop):
    values = {"w": np.ones((2, 2), np.float32), "w/Momentum": np.full((2, 2), 3, np.float32),
              "w/" + EMA: np.full((2, 2), 2, np.float32), "w/" + SWA: np.zeros((2, 2)),
              "beta1_power": np.float32(0.9), "emb": np.ones(4, np.float32),
              "global_step": np.int64(7),
              # A Keras optimizer's state, in its scope, and one under `training/`.
              "Adam/w/m": np.ones((2, 2), np.float32), "Adam/iter": np.int64(7),
              "Adam/learning_rate": np.float32(0.1),
              "training/Adagrad/emb/accumulator": np.ones(4, np.float32),
              "training/Adagrad/decay": np.float32(0.0)}
    source = save_checkpoint(tmp_path / "src" / "model.ckpt", values)
    out = str(tmp_path / "out" / "model.ckpt")
    estimator_ema.write_averaged_checkpoint(source, out, drop_optimizer_slots=drop)
    kept = ["emb", "global_step", "w"]
    if not drop:
        kept = sorted(kept + ["beta1_power", "w/Momentum", "w/" + SWA, "Adam/w/m", "Adam/iter",
                              "Adam/learning_rate", "training/Adagrad/emb/accumulator",
                              "training/Adagrad/decay"])
    assert _keys(out) == kept
    np.testing.assert_array_equal(load(out, "w"), values["w/" + EMA])


def test_many_chunks_many_data_files(hook_trained, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rewriting, "_CHUNK_BYTES", 1)
    out = str(tmp_path / "out" / "model.ckpt")
    estimator_ema.write_averaged_checkpoint(str(model_dir), out)
    data = [f for f in os.listdir(str(tmp_path / "out")) if ".data-" in f]
    assert sorted(data) == ["model.ckpt.data-0000%d-of-00003" % i for i in range(3)]
    for var in LINEAR:
        np.testing.assert_array_equal(load(out, var), load(model_dir, var + "/" + EMA))


def test_refuses_to_write_over_the_source(hook_trained, model_dir):
    prefix = tf.train.latest_checkpoint(str(model_dir))
    before = sorted(os.listdir(str(model_dir)))
    with pytest.raises(ValueError, match=r"^'output_prefix' must not be the source checkpoint "
                                         r"\(got '%s'\)\.$" % prefix):
        estimator_ema.write_averaged_checkpoint(str(model_dir), prefix)
    assert sorted(os.listdir(str(model_dir))) == before


def test_refuses_another_checkpoint_in_the_source_directory(model_dir):
    trained_with_hook(model_dir, steps=5)
    trained_with_hook(model_dir, steps=5)
    older = os.path.join(str(model_dir), "model.ckpt-5")
    with pytest.raises(ValueError, match=r"'output_prefix' must not overwrite another "
                                         r"checkpoint in the source checkpoint's directory "
                                         r"\(got '%s'\)\." % older):
        estimator_ema.write_averaged_checkpoint(str(model_dir), older)


def test_refuses_a_directory(hook_trained, model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'output_prefix' must be a checkpoint prefix such as "
                                         r"'<directory>/model.ckpt', not a directory "
                                         r"\(got '%s'\)\." % tmp_path):
        estimator_ema.write_averaged_checkpoint(str(model_dir), str(tmp_path))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"output_prefix": 5}, TypeError, r"'output_prefix' must be a checkpoint prefix path "
                                      r"\(got 5\)\."),
    ({"drop_optimizer_slots": "yes"}, TypeError, r"'drop_optimizer_slots' must be True or "
                                                 r"False \(got 'yes'\)\."),
], ids=["output_prefix", "drop_optimizer_slots"])
def test_write_bad_arguments(hook_trained, model_dir, tmp_path, kwargs, error, message):
    arguments = dict({"output_prefix": str(tmp_path / "out" / "m")}, **kwargs)
    with pytest.raises(error, match=message):
        estimator_ema.write_averaged_checkpoint(str(model_dir), **arguments)


def test_in_the_source_directory_the_state_file_is_left_alone(hook_trained, model_dir):
    state = (model_dir / "checkpoint").read_text()
    out = os.path.join(str(model_dir), "averaged.ckpt")
    estimator_ema.write_averaged_checkpoint(str(model_dir), out)
    assert (model_dir / "checkpoint").read_text() == state
    assert _keys(out) == ["global_step"] + LINEAR


def test_state_file_keeps_what_it_listed(hook_trained, model_dir, tmp_path):
    out_dir = tmp_path / "out"
    first = estimator_ema.write_averaged_checkpoint(str(model_dir), str(out_dir / "a.ckpt"))
    second = estimator_ema.write_averaged_checkpoint(str(model_dir), str(out_dir / "b.ckpt"))
    state = tf1.train.get_checkpoint_state(str(out_dir))
    assert state.model_checkpoint_path == second
    assert list(state.all_model_checkpoint_paths) == [first, second]


def _fail_on(monkeypatch, target, attribute, failing_call=1):
    """Makes the `failing_call`-th call of `target.attribute` raise."""
    original = getattr(target, attribute)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)
    monkeypatch.setattr(target, attribute, failing)


# With one tensor per chunk the three tensors make three data files, moved
# before the index: renames 1 to 3 are data, 4 the index.
FAILURES = {
    "second-chunk": (rewriting._TensorCopier, "copy", 2),
    "merge": (rewriting._TensorCopier, "merge", 1),
    "moving-data": (rewriting, "_rename", 2),
    "moving-index": (rewriting, "_rename", 4),
}


@pytest.mark.parametrize("where", sorted(FAILURES))
def test_a_failure_leaves_no_partial_output(hook_trained, model_dir, tmp_path, monkeypatch,
                                            where):
    monkeypatch.setattr(rewriting, "_CHUNK_BYTES", 1)
    source_files = sorted(os.listdir(str(model_dir)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _fail_on(monkeypatch, *FAILURES[where])
    with pytest.raises(RuntimeError, match="injected failure"):
        estimator_ema.write_averaged_checkpoint(str(model_dir), str(out_dir / "model.ckpt"))
    assert os.listdir(str(out_dir)) == []
    assert sorted(os.listdir(str(model_dir))) == source_files


def test_a_failure_does_not_create_the_output_directory(hook_trained, model_dir, tmp_path,
                                                        monkeypatch):
    _fail_on(monkeypatch, rewriting._TensorCopier, "merge")
    with pytest.raises(RuntimeError, match="injected failure"):
        estimator_ema.write_averaged_checkpoint(str(model_dir), str(tmp_path / "new" / "m"))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("fail", [False, True], ids=["replaced", "kept-on-failure"])
def test_overwriting_an_output_checkpoint(model_dir, tmp_path, monkeypatch, fail):
    old = save_checkpoint(tmp_path / "out" / "model.ckpt",
                          {"old": np.zeros(3, np.float32), "linear/w": np.ones((3, 1))})
    trained_with_hook(model_dir)
    monkeypatch.setattr(rewriting, "_CHUNK_BYTES", 1)
    if fail:
        # Renames 1-2 set the old checkpoint aside, 3-5 move data, 6 the index.
        _fail_on(monkeypatch, rewriting, "_rename", 6)
        with pytest.raises(RuntimeError, match="injected failure"):
            estimator_ema.write_averaged_checkpoint(str(model_dir), old)
        assert _keys(old) == ["linear/w", "old"]
        np.testing.assert_array_equal(load(old, "linear/w"), np.ones((3, 1)))
    else:
        estimator_ema.write_averaged_checkpoint(str(model_dir), old)
        assert _keys(old) == ["global_step"] + LINEAR
    assert not [f for f in os.listdir(str(tmp_path / "out")) if ".tmp-" in f]


# warm_start_from_averages

def _averages(model_dir):
    return [load(model_dir, "linear/w/" + EMA), load(model_dir, "linear/b/" + EMA)]


# TensorFlow's warm start initializes two variables from one checkpoint tensor from 2.8 on.
WARM_STARTS_TWICE = TF_VERSION >= (2, 8)
TF2_ONLY = pytest.mark.skipif(not WARM_STARTS_TWICE, reason="include_averages needs TF 2.8+")


@pytest.mark.parametrize("vars_to_warm_start, include_averages", [
    (".*", False), (["linear/"], False),
    pytest.param(["linear/"], True, marks=TF2_ONLY),
], ids=["regex", "list", "list-include-averages"])
def test_warm_start_from_averages_with_the_hook(hook_trained, model_dir, tmp_path,
                                                vars_to_warm_start, include_averages):
    start = _averages(model_dir)
    source_files = sorted(os.listdir(str(model_dir)))
    settings = estimator_ema.warm_start_from_averages(
        str(model_dir), vars_to_warm_start, include_averages=include_averages)
    new_dir = tmp_path / "new"
    new = estimator(new_dir, warm_start_from=settings)
    new.train(input_fn, steps=3, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    trajectory = sgd_weights(3, w=start[0], b=start[1])
    np.testing.assert_allclose(load(new_dir, "linear/w"), trajectory[-1][0], atol=1e-5)
    # The hook's averages start from the warm-started weights: the old averages.
    expected = ema_oracle(trajectory, 0.8)
    np.testing.assert_allclose(load(new_dir, "linear/w/" + EMA), expected[0], atol=1e-5)
    np.testing.assert_allclose(load(new_dir, "linear/b/" + EMA), expected[1], atol=1e-5)
    assert sorted(os.listdir(str(model_dir))) == source_files


def test_warm_start_settings(hook_trained, model_dir):
    settings = estimator_ema.warm_start_from_averages(str(model_dir))
    assert isinstance(settings, tf.estimator.WarmStartSettings)
    assert settings.ckpt_to_initialize_from == tf.train.latest_checkpoint(str(model_dir))
    assert settings.vars_to_warm_start == ".*"
    assert settings.var_name_to_prev_var_name == {"linear/w": "linear/w/" + EMA,
                                                  "linear/b": "linear/b/" + EMA}


def _weights_only_model_fn(features, labels, mode, params):
    """The linear model without its bias: a new model with fewer variables."""
    w = tf1.get_variable("linear/w", [3, 1], initializer=tf1.zeros_initializer())
    predictions = tf.matmul(features, w)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(0.0).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def test_transfer_to_a_smaller_model_needs_narrower_patterns(hook_trained, model_dir, tmp_path):
    everything = estimator_ema.warm_start_from_averages(str(model_dir))
    with pytest.raises(ValueError, match=r"var_name_to_prev_var_name that were not used"):
        estimator(tmp_path / "a", model_fn=_weights_only_model_fn,
                  warm_start_from=everything).train(input_fn, steps=1)
    narrow = estimator_ema.warm_start_from_averages(str(model_dir), "linear/w")
    estimator(tmp_path / "b", model_fn=_weights_only_model_fn,
              warm_start_from=narrow).train(input_fn, steps=1)
    np.testing.assert_array_equal(load(tmp_path / "b", "linear/w"), _averages(model_dir)[0])


def _stock_ema_model_fn(features, labels, mode, params):
    """Stock EMA built in the model_fn (slim style), so the averages exist when
    the warm start runs; learning rate 0, so the weights stay as warm-started."""
    w = tf1.get_variable("linear/w", [3, 1], initializer=tf1.zeros_initializer())
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) + b - labels))
    train_op = tf1.train.GradientDescentOptimizer(0.0).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    with tf.control_dependencies([train_op]):
        train_op = tf1.train.ExponentialMovingAverage(0.9).apply([w, b])
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


@TF2_ONLY
def test_include_averages_with_averages_built_in_the_model_fn(hook_trained, model_dir,
                                                              tmp_path):
    settings = estimator_ema.warm_start_from_averages(
        str(model_dir), ["linear/w:", "linear/b:"], include_averages=True)
    new_dir = tmp_path / "new"
    estimator(new_dir, model_fn=_stock_ema_model_fn, warm_start_from=settings).train(
        input_fn, steps=1)
    for var, average in zip(["linear/w", "linear/b"], _averages(model_dir)):
        np.testing.assert_allclose(load(new_dir, var), average, atol=1e-6)
        np.testing.assert_allclose(load(new_dir, var + "/" + EMA), average, atol=1e-6)


@pytest.mark.parametrize("include_averages", [False, pytest.param(True, marks=TF2_ONLY)],
                         ids=["weights", "and-averages"])
def test_include_averages_selects_the_averages(model_dir, include_averages):
    trained_with_hook(model_dir, zero_debias=True)
    settings = estimator_ema.warm_start_from_averages(
        str(model_dir), ["linear/w:", "linear/b:"], include_averages=include_averages)
    graph = tf.Graph()
    with graph.as_default():
        variables = {}
        for var in LINEAR:
            shape = [3, 1] if var == "linear/w" else [1]
            names = [var, var + "/" + EMA, var + "/" + EMA + "/biased"]
            for name in names:
                variables[name] = tf1.get_variable(name, shape,
                                                   initializer=tf1.constant_initializer(5.0))
        variables["local_step"] = tf1.get_variable(
            "linear/w/%s/local_step" % EMA, [], initializer=tf1.constant_initializer(5.0))
        tf1.train.warm_start(*settings)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            values = session.run(variables)
    for var in LINEAR:
        np.testing.assert_array_equal(values[var], load(model_dir, var + "/" + EMA))
        for name in [var + "/" + EMA, var + "/" + EMA + "/biased"]:
            expected = load(model_dir, name) if include_averages else np.full_like(values[name], 5)
            np.testing.assert_array_equal(values[name], expected)
    step_name = "linear/w/%s/local_step" % EMA
    assert values["local_step"] == (load(model_dir, step_name) if include_averages else 5.0)


@pytest.mark.skipif(WARM_STARTS_TWICE, reason="TensorFlow 1.15 and 2.4 to 2.7 only")
def test_include_averages_is_refused_before_tf28(hook_trained, model_dir):
    with pytest.raises(ValueError, match=r"'include_averages' needs TensorFlow 2\.8 or later: "
                                         r"the warm start of TensorFlow %s cannot initialize a "
                                         r"variable and its average from the same checkpoint "
                                         r"tensor \(got True\)\." % re.escape(tf.__version__)):
        estimator_ema.warm_start_from_averages(str(model_dir), ["linear/"],
                                               include_averages=True)


@pytest.mark.parametrize("args, kwargs, message", [
    pytest.param((".*",), {"include_averages": True},
     r"'include_averages' needs 'vars_to_warm_start' as a list of regexes, since a single "
     r"regex warm-starts only trainable variables and averages are not trainable "
     r"\(got '\.\*'\)\.", marks=TF2_ONLY),
    (("head/",), {}, r"'vars_to_warm_start' selects none of the 2 averaged variables in '.*' "
                     r"\(got 'head/'\)\."),
    (([],), {}, r"'vars_to_warm_start' must be a regex string or a non-empty list of them "
                r"\(got \[\]\)\."),
], ids=["include-averages-with-regex", "selects-nothing", "empty-list"])
def test_warm_start_bad_values(hook_trained, model_dir, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimator_ema.warm_start_from_averages(str(model_dir), *args, **kwargs)


def test_warm_start_invalid_regex(hook_trained, model_dir):
    with pytest.raises(ValueError, match=r"'vars_to_warm_start' has an invalid regular "
                                         r"expression '\(': "):
        estimator_ema.warm_start_from_averages(str(model_dir), "(")


def test_warm_start_bad_types(hook_trained, model_dir):
    with pytest.raises(TypeError, match=r"'include_averages' must be True or False "
                                        r"\(got 'no'\)\."):
        estimator_ema.warm_start_from_averages(str(model_dir), include_averages="no")
    with pytest.raises(TypeError, match=r"'vars_to_warm_start' must be a regex string or a "
                                        r"list of them \(got 3\)\."):
        estimator_ema.warm_start_from_averages(str(model_dir), 3)


@pytest.mark.parametrize("vars_to_warm_start, mapped", [
    (".*", ["dense/kernel"]),
    ([".*"], ["bn/moving_mean", "dense/kernel"]),
], ids=["regex-trainable-only", "list-global"])
def test_batch_norm_statistics_follow_tf_selection(tmp_path, vars_to_warm_start, mapped):
    values = {}
    for var in ["bn/moving_mean", "dense/kernel"]:
        values[var] = np.zeros(2, np.float32)
        values[var + "/" + EMA] = np.ones(2, np.float32)
    source = save_checkpoint(tmp_path / "model.ckpt", values)
    settings = estimator_ema.warm_start_from_averages(source, vars_to_warm_start)
    assert sorted(settings.var_name_to_prev_var_name) == mapped
