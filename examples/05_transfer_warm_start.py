"""Transfer the averages to a second model instance and keep averaging there.

Model A trains with the hook. Model B, another instance in another
model_dir, starts from A's averages (`warm_start_from_averages`) and trains
on with its own hook, whose averages start from those warm-started weights.

    python examples/05_transfer_warm_start.py
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
    loss = tf1.losses.mean_squared_error(labels, predictions)
    train_op = tf1.train.GradientDescentOptimizer(0.05).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    train, held_out = make_data(1000, 0), make_data(1000, 1)

    def train_input_fn():
        return tf.data.Dataset.from_tensor_slices(train).shuffle(1000, seed=0).repeat().batch(2)

    def eval_input_fn():
        return tf.data.Dataset.from_tensor_slices(held_out).batch(500)

    config = tf.estimator.RunConfig(tf_random_seed=0)
    model_a = tf.estimator.Estimator(model_fn, tempfile.mkdtemp(), config=config)
    model_a.train(train_input_fn, steps=300,
                  hooks=[estimator_ema.ExponentialMovingAverageHook(decay=0.99)])

    warm_start = estimator_ema.warm_start_from_averages(model_a.model_dir)
    model_b = tf.estimator.Estimator(model_fn, tempfile.mkdtemp(), config=config,
                                     warm_start_from=warm_start)
    # B's averages start from its warm-started weights, A's averages; a
    # constant decay (no warm-up) continues them instead of restarting.
    def hook():
        return estimator_ema.ExponentialMovingAverageHook(decay=0.99, num_updates=False)

    model_b.train(train_input_fn, steps=1, hooks=[hook()])
    start = tf.train.load_variable(model_b.model_dir, "linear/kernel/ExponentialMovingAverage")
    a_averages = estimator_ema.read_averages(model_a.model_dir)["linear/kernel"]
    print("B's average after its first step vs A's averages: max difference %.4f"
          % np.abs(start - a_averages).max())
    model_b.train(train_input_fn, steps=300, hooks=[hook()])
    raw = model_b.evaluate(eval_input_fn)["loss"]
    averaged = estimator_ema.averaged_estimator(model_b).evaluate(eval_input_fn)["loss"]
    print("model B held-out MSE: raw weights %.4f, averaged weights %.4f" % (raw, averaged))
    return raw, averaged


if __name__ == "__main__":
    main()
