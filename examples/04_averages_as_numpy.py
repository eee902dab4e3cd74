"""The averaged weights as numpy arrays, next to the model's own predictions.

`read_averages` returns `{variable name: numpy array}`; predictions computed
from them in numpy equal what the decorated model predicts, since its
PREDICT mode uses the averages.

    python examples/04_averages_as_numpy.py
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


@estimator_ema.with_ema(decay=0.99)
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
        steps=500)
    averages = estimator_ema.read_averages(estimator.model_dir)
    kernel, bias = averages["linear/kernel"], averages["linear/bias"]
    print("averaged kernel:", np.round(kernel.ravel(), 3))
    x, y = held_out
    by_numpy = x @ kernel + bias
    by_model = np.array([p["y"] for p in estimator.predict(
        lambda: tf.data.Dataset.from_tensor_slices(x).batch(100))])
    print("numpy predictions equal the model's: %s (max difference %.2g)"
          % (np.allclose(by_numpy, by_model, atol=1e-5), np.abs(by_numpy - by_model).max()))
    raw_kernel = tf.train.load_variable(estimator.model_dir, "linear/kernel")
    raw_bias = tf.train.load_variable(estimator.model_dir, "linear/bias")
    raw = np.mean((x @ raw_kernel + raw_bias - y) ** 2)
    averaged = np.mean((by_numpy - y) ** 2)
    print("held-out MSE: raw weights %.4f, averaged weights %.4f" % (raw, averaged))
    return raw, averaged


if __name__ == "__main__":
    main()
