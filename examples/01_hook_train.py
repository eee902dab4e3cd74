"""Keep an EMA of the weights during Estimator.train with a hook, then evaluate
the raw weights and the averages.

    python examples/01_hook_train.py
"""

import random
import tempfile

import numpy as np
import tensorflow as tf

import estimator_ema

tf1 = tf.compat.v1


def make_data(rows, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(rows, 10).astype(np.float32)
    y = (x @ np.linspace(-1, 1, 10)[:, None] + rng.randn(rows, 1)).astype(np.float32)
    return x, y


def model_fn(features, labels, mode):
    predictions = tf1.layers.dense(features, 1, name="linear")
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf1.losses.mean_squared_error(labels, predictions)
    train_op = tf1.train.GradientDescentOptimizer(0.05).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    train, held_out = make_data(1000, 0), make_data(1000, 1)
    estimator = tf.estimator.Estimator(model_fn, tempfile.mkdtemp(),
                                       config=tf.estimator.RunConfig(tf_random_seed=0))
    estimator.train(
        lambda: tf.data.Dataset.from_tensor_slices(train).shuffle(1000, seed=0).repeat().batch(2),
        steps=500,
        hooks=[estimator_ema.ExponentialMovingAverageHook(decay=0.99)])

    def eval_input_fn():
        return tf.data.Dataset.from_tensor_slices(held_out).batch(250)

    raw = estimator.evaluate(eval_input_fn, name="raw")["loss"]
    averaged = estimator_ema.averaged_estimator(estimator).evaluate(
        eval_input_fn, name="averaged")["loss"]
    print("held-out MSE: raw weights %.4f, averaged weights %.4f" % (raw, averaged))
    return raw, averaged


if __name__ == "__main__":
    main()
