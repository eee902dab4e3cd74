"""Trains the conftest linear model under MirroredStrategy in a fresh process.

usage: mirrored.py MODEL_DIR REPLICAS {hook,decorator,evaluator,tensors}

"evaluator": the decorator with an InMemoryEvaluatorHook; "tensors": the
decorator, and a hook that writes the averages' `average_tensors` as the
session ends to MODEL_DIR/tensors.npz.

REPLICAS logical CPUs are configured before TensorFlow starts, which is why
this runs in its own process.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402


def main(model_dir, replicas, mode):
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import estimator_ema
    from conftest import input_fn, linear_model_fn

    strategy = tf.distribute.MirroredStrategy(["/cpu:%d" % i for i in range(replicas)])
    config = tf.estimator.RunConfig(train_distribute=strategy, save_summary_steps=1000,
                                    log_step_count_steps=1000)
    hooks = []
    if mode == "hook":
        model_fn = linear_model_fn
        hooks.append(estimator_ema.ExponentialMovingAverageHook(0.8))
    else:
        model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8)
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config,
                                       params={"optimizer": "v1"})
    if mode == "evaluator":
        hooks.append(estimator_ema.InMemoryEvaluatorHook(estimator, input_fn, steps=1))
    if mode == "tensors":
        hooks.append(Tensors(os.path.join(model_dir, "tensors.npz")))
    estimator.train(input_fn, steps=6, hooks=hooks)


class Tensors(tf.compat.v1.train.SessionRunHook):
    def __init__(self, path):
        self.path = path

    def begin(self):
        import estimator_ema
        self.tensors = estimator_ema.average_tensors()

    def end(self, session):
        import numpy as np
        np.savez(self.path, **{k.replace("/", "__"): v
                               for k, v in session.run(self.tensors).items()})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
