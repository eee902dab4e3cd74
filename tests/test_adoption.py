"""Adding averaging to a model that is already training, warm-starting averaged
models from plain checkpoints, and model_fns that bring their own default Saver."""

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (EMA, SWA, ema_oracle, estimator, input_fn, linear_model_fn, load,
                      run_config, sgd_weights, swa_oracle, tf1)

DECAY = 0.8
PLAIN_STEPS = 4
STEPS = 4


def _plain(model_dir):
    """The linear model trained PLAIN_STEPS steps without averaging."""
    estimator(model_dir).train(input_fn, steps=PLAIN_STEPS)
    assert not [k for k, _ in tf.train.list_variables(str(model_dir)) if EMA in k]


def _adopted(caplog, train):
    caplog.set_level(logging.INFO, logger="estimator_ema")
    train()
    return [r.getMessage() for r in caplog.records
            if "written before averaging began" in r.getMessage()]


def _assert_ema_from_restored_weights(model_dir, name="linear/w"):
    trajectory = sgd_weights(PLAIN_STEPS + STEPS)
    assert load(model_dir, "global_step") == PLAIN_STEPS + STEPS
    np.testing.assert_allclose(load(model_dir, "linear/w"), trajectory[-1][0], atol=1e-5)
    w, b = ema_oracle(trajectory[PLAIN_STEPS:], DECAY, first_step=PLAIN_STEPS + 1)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), w, atol=1e-5)
    np.testing.assert_allclose(load(model_dir, "linear/b/" + EMA), b, atol=1e-5)


@pytest.mark.parametrize("zero_debias", [False, True])
def test_the_hook_adopts_a_model_dir_without_averages(model_dir, caplog, zero_debias):
    _plain(model_dir)
    hook = estimator_ema.ExponentialMovingAverageHook(DECAY, zero_debias=zero_debias)
    logged = _adopted(caplog, lambda: estimator(model_dir).train(input_fn, steps=STEPS,
                                                                 hooks=[hook]))
    assert len(logged) == 1 and "ExponentialMovingAverage: checkpoint " in logged[0]
    trajectory = sgd_weights(PLAIN_STEPS + STEPS)
    w, _ = ema_oracle(trajectory[PLAIN_STEPS:], DECAY, first_step=PLAIN_STEPS + 1,
                      zero_debias=zero_debias)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), w, atol=1e-5)
    if not zero_debias:
        _assert_ema_from_restored_weights(model_dir)


def test_the_decorator_adopts_a_model_dir_without_averages(model_dir, caplog):
    _plain(model_dir)
    est = estimator(model_dir, model_fn=estimator_ema.with_ema(linear_model_fn, decay=DECAY))
    assert len(_adopted(caplog, lambda: est.train(input_fn, steps=STEPS))) == 1
    _assert_ema_from_restored_weights(model_dir)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_swa_adopts_a_model_dir_without_averages(model_dir, caplog, how):
    _plain(model_dir)
    start = PLAIN_STEPS + 2
    if how == "hook":
        hook = estimator_ema.StochasticWeightAveragingHook(start_step=start)
        logged = _adopted(caplog, lambda: estimator(model_dir).train(
            input_fn, steps=STEPS, hooks=[hook]))
    else:
        est = estimator(model_dir, model_fn=estimator_ema.with_swa(linear_model_fn,
                                                                   start_step=start))
        logged = _adopted(caplog, lambda: est.train(input_fn, steps=STEPS))
    assert len(logged) == 1 and "StochasticWeightAverage: checkpoint " in logged[0]
    (w, b), count = swa_oracle(sgd_weights(PLAIN_STEPS + STEPS), start)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + SWA), w, atol=1e-5)
    assert load(model_dir, SWA + "/count") == count


def test_a_checkpoint_with_averages_is_restored_not_restarted(model_dir, caplog):
    _plain(model_dir)
    hook = estimator_ema.ExponentialMovingAverageHook(DECAY)
    estimator(model_dir).train(input_fn, steps=2, hooks=[hook])
    caplog.clear()
    logged = _adopted(caplog, lambda: estimator(model_dir).train(
        input_fn, steps=2, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY)]))
    assert logged == []
    # Steps 5, 6 then 7, 8 (the input restarts: batches 0, 1 then 0, 1).
    trajectory = sgd_weights(PLAIN_STEPS + 2)
    trajectory += sgd_weights(2, *trajectory[-1], start_step=0)[1:]
    w, _ = ema_oracle(trajectory[PLAIN_STEPS:], DECAY, first_step=PLAIN_STEPS + 1)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), w, atol=1e-5)


SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts",
                      "train_until_killed.py")


def _train_process(model_dir, max_steps, kill_at=None):
    argv = [sys.executable, SCRIPT, str(model_dir), "hook", str(max_steps)]
    if kill_at:
        argv.append(str(kill_at))
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_killed_right_after_the_first_averaged_checkpoint(model_dir):
    _plain(model_dir)
    # The adopting run saves model.ckpt-4, now with averages, as its session
    # starts, and is killed after step 5.
    result = _train_process(model_dir, 12, kill_at=5)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert load(model_dir, "global_step") == PLAIN_STEPS
    np.testing.assert_array_equal(load(model_dir, "linear/w/" + EMA), load(model_dir, "linear/w"))
    result = _train_process(model_dir, 12)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "written before averaging began" not in result.stderr
    trajectory = sgd_weights(12)
    w, _ = ema_oracle(trajectory[PLAIN_STEPS:], DECAY, first_step=PLAIN_STEPS + 1)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), w, atol=1e-5)


def test_evaluating_averages_of_a_checkpoint_without_any(model_dir):
    _plain(model_dir)
    est = estimator(model_dir, model_fn=estimator_ema.with_ema(linear_model_fn))
    checkpoint = tf.train.latest_checkpoint(str(model_dir))
    with pytest.raises(ValueError, match=r"Checkpoint '%s' has no linear/b/%s, linear/w/%s "
                                         r"\(2 of the keys .*written before averaging began. "
                                         r"Train on with averaging" % (checkpoint, EMA, EMA)):
        est.evaluate(input_fn, steps=1)
    with pytest.raises(ValueError, match=r"Checkpoint '%s' has no averages named '%s' for this "
                                         r"model's variables\. If it was written before averaging "
                                         r"began, train on with averaging"
                                         % (checkpoint, EMA)):
        list(estimator_ema.averaged_estimator(estimator(model_dir)).predict(input_fn))


def test_the_decorator_warm_starts_from_a_plain_checkpoint(model_dir, tmp_path):
    _plain(model_dir)
    settings = tf.estimator.WarmStartSettings(str(model_dir), vars_to_warm_start=[".*"])
    for make, name in [(lambda fn: estimator_ema.with_ema(fn, decay=DECAY), EMA),
                       (lambda fn: estimator_ema.with_swa(fn, start_step=100), SWA)]:
        new_dir = tmp_path / name
        est = estimator(new_dir, model_fn=make(linear_model_fn), warm_start_from=settings)
        est.train(input_fn, steps=1)
        warm = sgd_weights(PLAIN_STEPS)[-1]
        # One step from the warm-started weights, which the averages start from.
        after = sgd_weights(1, *warm)
        if name == EMA:
            # The list of patterns warm-starts the global step too.
            expected = ema_oracle(after, DECAY, first_step=load(new_dir, "global_step"))[0]
        else:
            expected = after[-1][0]
        np.testing.assert_allclose(load(new_dir, "linear/w"), after[-1][0], atol=1e-5)
        np.testing.assert_allclose(load(new_dir, "linear/w/" + name), expected, atol=1e-5)


def own_saver_model_fn(features, labels, mode, params):
    """The linear model, with a Saver the model_fn builds and puts in SAVERS."""
    spec = linear_model_fn(features, labels, mode, params)
    if mode == tf.estimator.ModeKeys.TRAIN:
        tf1.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(max_to_keep=1))
    return spec


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_model_fn_with_its_own_default_saver_saves_the_averages(model_dir, how):
    config = run_config(save_checkpoints_steps=2)
    if how == "hook":
        est = estimator(model_dir, model_fn=own_saver_model_fn, config=config)
        est.train(input_fn, steps=STEPS, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY)])
    else:
        est = estimator(model_dir, config=config,
                        model_fn=estimator_ema.with_ema(own_saver_model_fn, decay=DECAY))
        est.train(input_fn, steps=STEPS)
    w, _ = ema_oracle(sgd_weights(STEPS), DECAY)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), w, atol=1e-5)
    # The model_fn's Saver's settings hold: one checkpoint kept.
    state = tf.train.get_checkpoint_state(str(model_dir))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model.ckpt-4"]


def test_several_savers_in_the_collection_are_refused(model_dir):
    def model_fn(features, labels, mode, params):
        spec = own_saver_model_fn(features, labels, mode, params)
        tf1.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver())
        return spec

    with pytest.raises(ValueError, match=r"The graph's SAVERS collection holds \[.*\]; averaging "
                                         r"needs it to hold one tf.compat.v1.train.Saver"):
        estimator(model_dir, model_fn=model_fn).train(
            input_fn, steps=1, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY)])
