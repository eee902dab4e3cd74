"""Precision of the dense update over many steps, against a float64 oracle and
against stock `ExponentialMovingAverage` on the same weights."""

import numpy as np
import pytest

from conftest import IS_TF1, tf, tf1
from estimator_ema import _ema, _options

ROWS, COLUMNS = 1000, 4
DECAY = 0.999
# Weights the steps cycle through: entries about 9, as in a trained table.
CYCLE = 101


def _weights():
    rng = np.random.RandomState(0)
    return (9.0 + 0.01 * rng.randn(CYCLE, ROWS, COLUMNS)).astype(np.float32)


def _oracle(weights, steps):
    """float64 `a <- a - (1 - d) * (a - w)` from the first weights, with the
    `1 - d` the graph computes (in float32)."""
    fraction = float(np.float32(1.0) - np.float32(DECAY))
    average = weights[0].astype(np.float64)
    for step in range(steps):
        average -= fraction * (average - weights[step % CYCLE])
    return average


def _train(weights, steps, use_resource):
    """The package's update and stock's, each after every step's new weights;
    returns their averages after `steps` steps."""
    with tf.Graph().as_default() as graph:
        tf1.train.get_or_create_global_step()
        index = tf1.placeholder(tf.int32, [])
        var = tf1.get_variable("w", initializer=weights[0], use_resource=use_resource)
        assign = tf1.assign(var, tf.gather(tf.constant(weights), index))
        averager = _ema.ExponentialMovingAverager(
            _options.EmaOptions(DECAY, num_updates=False, name="Ours"), graph)
        ours = averager.update(after=[assign])
        stock = tf1.train.ExponentialMovingAverage(DECAY)
        with tf.control_dependencies([assign]):
            stock_update = stock.apply([var])
        with tf1.Session() as session:
            # (Stock's average of a reference variable starts from the variable's
            # `initialized_value()`, which on some TensorFlows reads the variable
            # whatever its state: initialize the variable first.)
            session.run(var.initializer)
            session.run(tf1.global_variables_initializer())
            for step in range(steps):
                session.run([ours, stock_update], {index: step % CYCLE})
            return session.run([averager.averages[0], stock.average(var)])


@pytest.mark.parametrize("use_resource", [False] if IS_TF1 else [False, True],
                         ids=lambda resource: "resource" if resource else "reference")
def test_dense_update_over_20000_steps_is_as_precise_as_stock(use_resource):
    steps = 20000
    weights = _weights()
    oracle = _oracle(weights, steps)
    ours, stock = _train(weights, steps, use_resource)
    ours_error = np.max(np.abs(ours - oracle))
    stock_error = np.max(np.abs(stock - oracle))
    assert stock_error < 2e-4, stock_error
    assert ours_error <= stock_error, (ours_error, stock_error)
    np.testing.assert_array_equal(ours, stock)  # stock's arithmetic, bit for bit
