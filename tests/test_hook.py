"""ExponentialMovingAverageHook through Estimator.train, against numpy oracles."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (ema_oracle, estimator, input_fn, linear_model_fn, load, recording_fetches,
                      sgd_weights, summary_tags, tf1)

EMA = "ExponentialMovingAverage"


def assert_averages(model_dir, expected, name=EMA):
    np.testing.assert_allclose(load(model_dir, "linear/w/" + name), expected[0], atol=1e-5)
    np.testing.assert_allclose(load(model_dir, "linear/b/" + name), expected[1], atol=1e-5)


@pytest.mark.parametrize("optimizer", ["v1", "keras"])
@pytest.mark.parametrize("num_updates", [False, True], ids=["constant", "warmup"])
def test_matches_numpy_oracle(model_dir, optimizer, num_updates):
    hook = estimator_ema.ExponentialMovingAverageHook(0.8, num_updates=num_updates)
    estimator(model_dir, optimizer).train(input_fn, steps=12, hooks=[hook])
    trajectory = sgd_weights(12)
    np.testing.assert_allclose(load(model_dir, "linear/w"), trajectory[-1][0], atol=1e-5)
    assert_averages(model_dir, ema_oracle(trajectory, 0.8, num_updates=num_updates))


@pytest.mark.parametrize("optimizer", ["v1", "keras"])
@pytest.mark.parametrize("every_n_steps", [2, 5])
def test_every_n_steps_uses_decay_to_the_k(model_dir, optimizer, every_n_steps):
    hook = estimator_ema.ExponentialMovingAverageHook(0.8, every_n_steps=every_n_steps)
    estimator(model_dir, optimizer).train(input_fn, steps=12, hooks=[hook])
    assert_averages(model_dir, ema_oracle(sgd_weights(12), 0.8, every_n_steps=every_n_steps))


def test_update_is_woven_into_the_train_op_and_the_hook_fetches_nothing(model_dir):
    hook = recording_fetches(estimator_ema.ExponentialMovingAverageHook(0.8))
    estimator(model_dir).train(input_fn, steps=6, hooks=[hook])
    assert hook.fetched == [False] * 6
    assert_averages(model_dir, ema_oracle(sgd_weights(6), 0.8))


def model_fn_with_update_op_after_the_train_op(features, labels, mode, params):
    """The linear model, plus an UPDATE_OPS op that waits for the train op; with
    params["group"] the train op groups them, otherwise nothing runs it."""
    spec = linear_model_fn(features, labels, mode, params)
    with tf.control_dependencies([spec.train_op]):
        after = tf1.assign_add(tf1.get_variable("after", [], initializer=tf1.zeros_initializer(),
                                                trainable=False), 1.0)
    tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, after)
    if params.get("group"):
        return spec._replace(train_op=tf.group(spec.train_op, after))
    return spec


@pytest.mark.parametrize("group", [True, False], ids=["grouped", "unwired"])
def test_update_op_after_the_train_op(model_dir, group):
    # Grouped: the update is woven into the group, after both. Unwired: weaving
    # before the increment would make a cycle, so the hook fetches the update.
    hook = recording_fetches(estimator_ema.ExponentialMovingAverageHook(0.8))
    est = tf.estimator.Estimator(model_fn_with_update_op_after_the_train_op, str(model_dir),
                                 params={"group": group})
    est.train(input_fn, steps=4, hooks=[hook])
    assert hook.fetched == [not group] * 4
    assert load(model_dir, "after") == 4.0
    assert_averages(model_dir, ema_oracle(sgd_weights(4), 0.8))


def test_every_n_steps_woven_fetches_nothing(model_dir):
    # The gate is in the graph, as with_ema's: no run fetches anything.
    hook = recording_fetches(estimator_ema.ExponentialMovingAverageHook(0.8, every_n_steps=5))
    estimator(model_dir).train(input_fn, steps=12, hooks=[hook])
    assert hook.fetched == [False] * 12
    assert_averages(model_dir, ema_oracle(sgd_weights(12), 0.8, every_n_steps=5))


def unwired(model_dir):
    """An Estimator whose train op the hook cannot weave into: it fetches."""
    return tf.estimator.Estimator(model_fn_with_update_op_after_the_train_op, str(model_dir),
                                  params={"group": False})


def test_every_n_steps_chained_leaves_runs_that_are_not_due_alone(tmp_path):
    hook = recording_fetches(estimator_ema.ExponentialMovingAverageHook(0.8, every_n_steps=5))
    est = unwired(tmp_path)
    est.train(input_fn, steps=12, hooks=[hook])
    # The first run reads the global step; then only steps 5 and 10 are due.
    assert hook.fetched == [s in (1, 5, 10) for s in range(1, 13)]
    # A second train() restores step 12 and counts on from it.
    est.train(input_fn, steps=4, hooks=[hook])
    assert hook.fetched == [s in (13, 15) for s in range(13, 17)]
    expected = ema_oracle(sgd_weights(16), 0.8, every_n_steps=5)
    assert_averages(tmp_path, expected)


def test_counting_stops_with_a_warning_when_something_else_moves_the_step(
        model_dir, caplog):
    class MoveStepAfterSecondRun(tf1.train.SessionRunHook):
        def begin(self):
            self._runs = 0
            self._move = tf1.assign_add(tf1.train.get_global_step(), 1)

        def after_run(self, run_context, run_values):
            self._runs += 1
            if self._runs == 2:
                run_context.session.run(self._move)

    hook = recording_fetches(estimator_ema.ExponentialMovingAverageHook(0.8, every_n_steps=3))
    unwired(model_dir).train(input_fn, steps=6, hooks=[hook, MoveStepAfterSecondRun()])
    # Run 1 reads step 1, run 2 (step 2) is skipped, the mover makes it 3, run 3
    # (counted as step 3, due) finds step 4: from then on every run fetches.
    assert hook.fetched == [True, False, True, True, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warnings if "counting the runs gave 3" in m]) == 1
    assert "the global step is 4 after this run" in "".join(warnings)


def test_zero_debias(model_dir):
    hook = estimator_ema.ExponentialMovingAverageHook(0.9, zero_debias=True)
    estimator(model_dir).train(input_fn, steps=7, hooks=[hook])
    assert_averages(model_dir, ema_oracle(sgd_weights(7), 0.9, zero_debias=True))


@pytest.mark.parametrize("optimizer", ["v1", "keras"])
def test_update_is_woven_into_the_train_op_with_either_optimizer(model_dir, optimizer):
    runs = []

    class CountRuns(tf1.train.SessionRunHook):
        def before_run(self, run_context):
            runs.append(1)

    hook = recording_fetches(estimator_ema.ExponentialMovingAverageHook(0.9))
    estimator(model_dir, optimizer).train(input_fn, steps=3, hooks=[hook, CountRuns()])
    assert hook.fetched == [False] * 3
    assert len(runs) == 3
    assert_averages(model_dir, ema_oracle(sgd_weights(3), 0.9))


def test_second_train_call_continues_the_average(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    hook = estimator_ema.ExponentialMovingAverageHook(0.8)
    estimator(one).train(input_fn, steps=10, hooks=[hook])
    est = estimator(two)
    # Each train() call restarts input_fn; 4 steps is a whole pass over the data.
    est.train(input_fn, steps=4, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    est.train(input_fn, steps=6, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    for name in ["linear/w/" + EMA, "linear/b/" + EMA]:
        np.testing.assert_allclose(load(two, name), load(one, name), atol=1e-6)


def test_averages_start_from_warm_started_weights(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    estimator(source).train(input_fn, steps=5)
    warm = (load(source, "linear/w"), load(source, "linear/b"))
    est = estimator(target, warm_start_from=str(source))
    est.train(input_fn, steps=3, hooks=[estimator_ema.ExponentialMovingAverageHook(0.9)])
    # The new run's global step starts at 0, so batches start from the first.
    trajectory = sgd_weights(3, *warm)
    assert_averages(target, ema_oracle(trajectory, 0.9))


def test_stock_ema_restores_the_hooks_checkpoint(model_dir):
    estimator(model_dir).train(
        input_fn, steps=6, hooks=[estimator_ema.ExponentialMovingAverageHook(0.9)])
    with tf.Graph().as_default():
        w = tf1.get_variable("linear/w", [3, 1])
        b = tf1.get_variable("linear/b", [1])
        saver = tf1.train.Saver(tf1.train.ExponentialMovingAverage(0.9).variables_to_restore())
        with tf1.Session() as session:
            saver.restore(session, tf.train.latest_checkpoint(str(model_dir)))
            values = session.run([w, b])
    np.testing.assert_array_equal(values[0], load(model_dir, "linear/w/" + EMA))
    np.testing.assert_array_equal(values[1], load(model_dir, "linear/b/" + EMA))


@pytest.mark.parametrize("include, exclude, averaged", [
    ("w$", None, ["linear/w"]),
    (None, "w$", ["linear/b"]),
    (["w$", "b$"], "b$", ["linear/w"]),
], ids=["include", "exclude", "both"])
def test_include_exclude(model_dir, include, exclude, averaged):
    hook = estimator_ema.ExponentialMovingAverageHook(0.9, include=include, exclude=exclude)
    estimator(model_dir).train(input_fn, steps=2, hooks=[hook])
    names = {n for n, _ in tf.train.list_variables(str(model_dir))}
    assert {n[:-len("/" + EMA)] for n in names if n.endswith("/" + EMA)} == set(averaged)


def test_explicit_variable_list_and_custom_name(model_dir):
    def pick():
        return [v for v in tf1.global_variables() if v.op.name == "linear/b"]

    hook = estimator_ema.ExponentialMovingAverageHook(0.5, variables=pick, name="Avg")
    estimator(model_dir).train(input_fn, steps=4, hooks=[hook])
    expected = ema_oracle(sgd_weights(4), 0.5)
    np.testing.assert_allclose(load(model_dir, "linear/b/Avg"), expected[1], atol=1e-5)
    names = {n for n, _ in tf.train.list_variables(str(model_dir))}
    assert "linear/w/Avg" not in names


def test_summaries_written(model_dir):
    tags = summary_tags(model_dir, estimator_ema.ExponentialMovingAverageHook(0.9))
    assert {EMA + "/decay", EMA + "/distance", EMA + "/relative_distance"} <= tags


@pytest.mark.parametrize("kwargs, error, message", [
    ({"decay": 1.5}, ValueError, r"'decay' must be a float in \[0, 1\) \(got 1.5\)\."),
    ({"decay": 1.0}, ValueError, r"'decay' must be a float in \[0, 1\) \(got 1.0\)\."),
    ({"decay": -0.1}, ValueError, r"'decay' must be a float in \[0, 1\) \(got -0.1\)\."),
    ({"decay": "0.9"}, TypeError, r"'decay' must be a float in \[0, 1\) \(got '0.9'\)\."),
    ({"decay": True}, TypeError, r"'decay' must be a float in \[0, 1\) \(got True\)\."),
    ({"num_updates": 1}, TypeError, r"'num_updates' must be True or False \(got 1\)\."),
    ({"zero_debias": None}, TypeError, r"'zero_debias' must be True or False \(got None\)\."),
    ({"every_n_steps": 0}, ValueError, r"'every_n_steps' must be a positive int \(got 0\)\."),
    ({"every_n_steps": 2.0}, TypeError, r"'every_n_steps' must be a positive int \(got 2.0\)\."),
    ({"include": "("}, ValueError, r"'include' has an invalid regular expression '\(': "),
    ({"exclude": 3}, TypeError, r"'exclude' must be a regex string or a list of them \(got 3\)\."),
    ({"include": ["a", 3]}, TypeError,
     r"'include' must be a regex string or a list of them \(got 3\)\."),
    ({"variables": "w"}, TypeError, r"'variables' must be None, a list of variables or a "
                                    r"callable returning one \(got 'w'\)\."),
    ({"name": ""}, ValueError, r"'name' must be a non-empty string of letters, digits"),
    ({"name": "a/b"}, ValueError, r"'name' must be a non-empty string .* \(got 'a/b'\)\."),
    ({"name": 7}, TypeError, r"'name' must be a non-empty string \(got 7\)\."),
], ids=lambda value: str(value)[:40])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        estimator_ema.ExponentialMovingAverageHook(**kwargs)


def _begin_in_graph(hook, build):
    with tf.Graph().as_default():
        build()
        hook.begin()


def test_no_global_step_is_a_runtime_error():
    hook = estimator_ema.ExponentialMovingAverageHook()
    with pytest.raises(RuntimeError, match=r"need a global step; create one with "):
        _begin_in_graph(hook, lambda: tf1.get_variable("w", [1]))


def test_include_matching_nothing_names_the_pattern():
    hook = estimator_ema.ExponentialMovingAverageHook(include=["kernel", "w$"])

    def build():
        tf1.train.get_or_create_global_step()
        tf1.get_variable("w", [1])

    with pytest.raises(ValueError, match=r"'include' pattern\(s\) \['kernel'\] matched none "
                                         r"of the 1 candidate variables \(w\)\."):
        _begin_in_graph(estimator_ema.ExponentialMovingAverageHook(include="kernel"), build)
    # A pattern list where one matches is fine.
    _begin_in_graph(hook, build)


def test_exclude_everything_is_an_error():
    def build():
        tf1.train.get_or_create_global_step()
        tf1.get_variable("w", [1])

    with pytest.raises(ValueError, match=r"'include'=\[\] and 'exclude'=\['.\*'\] leave none "
                                         r"of the 1 candidate variables \(w\)\."):
        _begin_in_graph(estimator_ema.ExponentialMovingAverageHook(exclude=".*"), build)


def test_empty_graph_is_an_error():
    with pytest.raises(ValueError, match=r"the default selection found no variables"):
        _begin_in_graph(estimator_ema.ExponentialMovingAverageHook(),
                        tf1.train.get_or_create_global_step)


def test_two_hooks_with_one_name_conflict():
    def build():
        tf1.train.get_or_create_global_step()
        tf1.get_variable("w", [1])

    with tf.Graph().as_default():
        build()
        estimator_ema.ExponentialMovingAverageHook().begin()
        with pytest.raises(RuntimeError, match=r"Variable w already has an average named "
                                               r"'ExponentialMovingAverage'"):
            estimator_ema.ExponentialMovingAverageHook().begin()


def test_batch_norm_statistics_are_in_the_default_selection():
    with tf.Graph().as_default():
        tf1.train.get_or_create_global_step()
        x = tf1.placeholder(tf.float32, [None, 2])
        tf1.layers.batch_normalization(x, training=True)
        hook = estimator_ema.ExponentialMovingAverageHook()
        hook.begin()
        names = sorted(v.op.name for v in hook.averager.variables)
    assert names == ["batch_normalization/beta", "batch_normalization/gamma",
                     "batch_normalization/moving_mean", "batch_normalization/moving_variance"]
