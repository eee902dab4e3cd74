"""Parameter-server training on one machine: three processes, one average.

Starts a parameter server, a chief and a worker on 127.0.0.1, each a copy of
this script with its own TF_CONFIG, trains with ExponentialMovingAverageHook
through tf.estimator.train_and_evaluate, and has the chief evaluate the raw
and the averaged weights. The averages live beside their variables on the
parameter server; both workers' steps update them.

    python examples/09_distributed_local.py
"""

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

STEPS = 1000


def make_data(rows, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(rows, 10).astype(np.float32)
    y = (x @ np.linspace(-1, 1, 10)[:, None] + rng.randn(rows, 1)).astype(np.float32)
    return x, y


def run_task(model_dir):
    """One cluster task: TF_CONFIG says which."""
    import tensorflow as tf
    import estimator_ema

    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    tf1 = tf.compat.v1
    train, held_out = make_data(2000, 0), make_data(1000, 1)

    def model_fn(features, labels, mode):
        predictions = tf1.layers.dense(features, 1, name="linear")
        loss = tf1.losses.mean_squared_error(labels, predictions)
        train_op = tf1.train.GradientDescentOptimizer(0.05).minimize(
            loss, global_step=tf1.train.get_or_create_global_step())
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    class Pace(tf1.train.SessionRunHook):
        """Slows the steps a little, so the worker (which starts ~5 s after
        the chief) gets to train too on such a tiny model."""

        def after_run(self, run_context, run_values):
            time.sleep(0.01)

    def train_input_fn():
        return tf.data.Dataset.from_tensor_slices(train).shuffle(2000).repeat().batch(2)

    def eval_input_fn():
        return tf.data.Dataset.from_tensor_slices(held_out).batch(500)

    config = tf.estimator.RunConfig(save_checkpoints_steps=200)
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config)
    hooks = [estimator_ema.ExponentialMovingAverageHook(decay=0.995), Pace()]
    tf.estimator.train_and_evaluate(
        estimator, tf.estimator.TrainSpec(train_input_fn, max_steps=STEPS, hooks=hooks),
        tf.estimator.EvalSpec(eval_input_fn, steps=None, start_delay_secs=0, throttle_secs=0))
    if config.is_chief:
        raw = estimator.evaluate(eval_input_fn)["loss"]
        averaged = estimator_ema.averaged_estimator(estimator).evaluate(eval_input_fn)["loss"]
        print("chief: held-out MSE raw weights %.4f, averaged weights %.4f" % (raw, averaged))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def main():
    model_dir = tempfile.mkdtemp(prefix="estimator-ema-cluster-")
    cluster = dict(zip(["ps", "chief", "worker"],
                       [["127.0.0.1:%d" % port] for port in free_ports(3)]))
    processes = {}
    try:
        for task in ["ps", "chief", "worker"]:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": task, "index": 0}}))
            processes[task] = subprocess.Popen(
                [sys.executable, __file__, "--task", model_dir], env=env,
                stderr=subprocess.DEVNULL)
        # The ps serves until it is stopped; the chief and the worker finish.
        for task in ["chief", "worker"]:
            if processes[task].wait(timeout=600):
                raise SystemExit("the %s failed" % task)
    finally:
        for process in processes.values():
            process.kill()
    print("model_dir: %s" % model_dir)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--task"]:
        run_task(sys.argv[2])
    else:
        main()
