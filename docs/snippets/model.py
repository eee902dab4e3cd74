import numpy as np
import tensorflow as tf

import estimator_ema


def input_fn():
    """Noisy linear data, y = x @ [1, -2, 0.5] + noise, in batches of 8."""
    rng = np.random.RandomState(0)
    x = rng.randn(256, 3).astype(np.float32)
    y = (x @ [[1.0], [-2.0], [0.5]] + 0.5 * rng.randn(256, 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).repeat().batch(8)


def model_fn(features, labels, mode):
    """A linear model trained with plain SGD."""
    predictions = tf.compat.v1.layers.dense(features["x"], 1, name="linear")
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf.compat.v1.losses.mean_squared_error(labels, predictions)
    optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.1)
    train_op = optimizer.minimize(loss, global_step=tf.compat.v1.train.get_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def serving_input_receiver_fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
    return tf.estimator.export.ServingInputReceiver({"x": x}, {"x": x})
