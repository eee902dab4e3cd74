"""Two model styles: a tf_slim model_fn with the decorator, and a Keras model
through model_to_estimator with the hook (the decorator cannot reach the
model_fn that model_to_estimator builds).

    pip install tf-slim
    python examples/07_slim_and_keras.py
"""

import random
import tempfile

import numpy as np
import tensorflow as tf

import estimator_ema

tf1 = tf.compat.v1
IS_TF1 = tf.__version__.startswith("1.")


def make_data(rows, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(rows, 6).astype(np.float32)
    y = (np.tanh(x @ np.linspace(-1, 1, 6)[:, None]) + 0.5 * rng.randn(rows, 1)).astype(
        np.float32)
    return x, y


TRAIN, HELD_OUT = make_data(2000, 0), make_data(1000, 1)


def train_input_fn():
    return tf.data.Dataset.from_tensor_slices(TRAIN).shuffle(2000, seed=0).repeat().batch(4)


def eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(HELD_OUT).batch(500)


@estimator_ema.with_ema(decay=0.99, evaluate_with="both")
def slim_model_fn(features, labels, mode):
    import tf_slim as slim

    training = mode == tf.estimator.ModeKeys.TRAIN
    net = slim.fully_connected(features, 16, normalizer_fn=slim.batch_norm,
                               normalizer_params={"is_training": training}, scope="hidden")
    predictions = slim.fully_connected(net, 1, activation_fn=None, scope="output")
    loss = tf1.losses.mean_squared_error(labels, predictions)
    # create_train_op wires UPDATE_OPS and the global step.
    train_op = slim.learning.create_train_op(loss, tf1.train.GradientDescentOptimizer(0.1))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                      predictions={"y": predictions})


def slim_example():
    from tensorflow.python.framework import ops
    if not hasattr(ops, "Tensor"):  # tf_slim 1.1 still reads ops.Tensor (moved in TF 2.14)
        ops.Tensor = tf.Tensor
    estimator = tf.estimator.Estimator(slim_model_fn, tempfile.mkdtemp(),
                                       config=tf.estimator.RunConfig(tf_random_seed=0))
    estimator.train(train_input_fn, steps=600)
    metrics = estimator.evaluate(eval_input_fn)
    print("tf_slim:  held-out MSE raw weights %.4f, averaged weights %.4f"
          % (metrics["raw_weights/loss"], metrics["loss"]))
    return metrics["raw_weights/loss"], metrics["loss"]


def keras_example():
    tf1.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.layers.Dense(16, activation="tanh", input_shape=(6,), name="hidden"),
        tf.keras.layers.Dense(1, name="output")])
    optimizers = tf.keras.optimizers
    model.compile(optimizer=getattr(optimizers, "legacy", optimizers).SGD(0.1), loss="mse")
    # TF 2's default object-based checkpoints would drop the averages.
    kwargs = {} if IS_TF1 else {"checkpoint_format": "saver"}
    estimator = tf.keras.estimator.model_to_estimator(
        keras_model=model, model_dir=tempfile.mkdtemp(),
        config=tf.estimator.RunConfig(tf_random_seed=0), **kwargs)
    estimator.train(train_input_fn, steps=600,
                    hooks=[estimator_ema.ExponentialMovingAverageHook(decay=0.99)])
    raw = estimator.evaluate(eval_input_fn)["loss"]
    averaged = estimator_ema.averaged_estimator(estimator).evaluate(eval_input_fn)["loss"]
    print("Keras:    held-out MSE raw weights %.4f, averaged weights %.4f" % (raw, averaged))
    return raw, averaged


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    return slim_example(), keras_example()


if __name__ == "__main__":
    main()
