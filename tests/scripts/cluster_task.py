"""One task of a local TF_CONFIG cluster training the conftest linear model.

usage: cluster_task.py MODEL_DIR {hook,decorator,sync,embedding} MAX_STEPS   (TF_CONFIG set)

(`embedding`: the hook on a model with a partitioned embedding table.)

Runs tf.estimator.train_and_evaluate (a parameter server blocks in it until
killed). Each training task writes MODEL_DIR/<task>.json with the steps it ran
and where its graph put the variables; the chief also writes its final
evaluation (of the averages) there.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

import estimator_ema  # noqa: E402
from conftest import DATA, LEARNING_RATE, input_fn, linear_model_fn, tf1  # noqa: E402

DECAY = 0.8
ZERO_DEBIAS = True  # its update counter shows how many steps fed the average
REPLICAS = 2


def eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(32)


def sync_model_fn(features, labels, mode, params, config):
    """SyncReplicasOptimizer averaging through its own `variable_averages`:
    one average update per global step, applied by the chief after the
    aggregated update."""
    w = tf1.get_variable("linear/w", [3, 1], initializer=tf1.zeros_initializer())
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) + b - labels))
    if mode != tf.estimator.ModeKeys.TRAIN:
        # No optimizer here: its `variable_averages.apply` would create averages.
        return tf.estimator.EstimatorSpec(mode, loss=loss)
    step = tf1.train.get_or_create_global_step()
    averages = tf1.train.ExponentialMovingAverage(DECAY, num_updates=step, zero_debias=True)
    # zero_debias applies to tensors only: the tensor's `local_step` counts updates.
    updates = tf.constant(1.0, name="average_updates")
    optimizer = tf1.train.SyncReplicasOptimizer(
        tf1.train.GradientDescentOptimizer(LEARNING_RATE), replicas_to_aggregate=REPLICAS,
        total_num_replicas=REPLICAS, variable_averages=averages,
        variables_to_average=[w, b, updates])
    train_op = optimizer.minimize(loss, global_step=step)
    return tf.estimator.EstimatorSpec(
        mode, loss=loss, train_op=train_op,
        training_hooks=[optimizer.make_session_run_hook(config.is_chief)])


TABLE_ROWS = 16


def embedding_model_fn(features, labels, mode, params):
    """The linear model plus an embedding table in two parts, one per parameter server."""
    table = tf1.get_variable("emb", [TABLE_ROWS, 1], initializer=tf1.zeros_initializer(),
                             partitioner=tf1.fixed_size_partitioner(2))
    w = tf1.get_variable("linear/w", [3, 1], initializer=tf1.zeros_initializer())
    ids = tf.math.floormod(tf.cast(tf.abs(features[:, 0]) * 5, tf.int64), TABLE_ROWS)
    predictions = (tf.matmul(features, w)
                   + tf1.nn.embedding_lookup(table, ids, partition_strategy="div"))
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


class Report(tf1.train.SessionRunHook):
    """Counts this task's steps, records variable placement, and paces the
    steps (a worker starts about 5 s after the chief: with unpaced steps the
    chief would finish alone).

    With `wait_for`, `end` waits for that file (the worker's report, written
    after its last step) before returning: hooks end in order and the chief's
    checkpoint saver comes after this one, so the final checkpoint then holds
    every step of both tasks (else a worker step can land after that save)."""

    def __init__(self, path, pace_secs=0.02, wait_for=None, wait_secs=120):
        self._path = path
        self._pace_secs = pace_secs
        self._wait_for = wait_for
        self._wait_secs = wait_secs
        self._steps = 0

    def after_create_session(self, session, coord):
        self._devices = {v.op.name: v.device for v in tf1.global_variables()}

    def after_run(self, run_context, run_values):
        self._steps += 1
        time.sleep(self._pace_secs)

    def end(self, session):
        with open(self._path, "w") as handle:
            json.dump({"steps": self._steps, "devices": self._devices}, handle)
        deadline = time.time() + self._wait_secs
        while self._wait_for and not os.path.exists(self._wait_for) and time.time() < deadline:
            time.sleep(0.1)


def main(model_dir, mode, max_steps):
    config = tf.estimator.RunConfig(save_checkpoints_steps=10, save_summary_steps=1000,
                                    log_step_count_steps=1000)
    task = "%s%d" % (config.task_type, config.task_id)
    # (SyncReplicas workers block on the chief's queue: the chief must not wait there.)
    wait_for = (os.path.join(model_dir, "worker0.json")
                if config.is_chief and mode != "sync" else None)
    hooks = [Report(os.path.join(model_dir, task + ".json"), wait_for=wait_for)]
    evaluator = estimator_ema.averaged_estimator
    if mode == "decorator":
        model_fn, evaluator = estimator_ema.with_ema(linear_model_fn, decay=DECAY,
                                          zero_debias=ZERO_DEBIAS), None
    elif mode == "sync":
        model_fn = sync_model_fn
    else:
        model_fn = embedding_model_fn if mode == "embedding" else linear_model_fn
        hooks.insert(0, estimator_ema.ExponentialMovingAverageHook(DECAY, zero_debias=ZERO_DEBIAS))
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config,
                                       params={"optimizer": "v1"})
    tf.estimator.train_and_evaluate(
        estimator, tf.estimator.TrainSpec(input_fn, max_steps=max_steps, hooks=hooks),
        tf.estimator.EvalSpec(eval_input_fn, steps=None, throttle_secs=0, start_delay_secs=0))
    if config.is_chief and mode != "sync":
        # (A SyncReplicas chief then waits out its queue runners' grace period.)
        final = (evaluator(estimator) if evaluator else estimator).evaluate(eval_input_fn)
        with open(os.path.join(model_dir, "result.json"), "w") as handle:
            json.dump({k: float(v) for k, v in final.items()}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
