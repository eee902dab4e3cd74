"""One task of a local TF_CONFIG cluster training the conftest linear model.

usage: cluster_task.py MODEL_DIR MODE MAX_STEPS   (TF_CONFIG set)

MODE: hook, decorator, sync (the linear model); embedding (the hook on a model
with a partitioned embedding table); lazy-hook, lazy-decorator (lazy rows of a
table partitioned over the parameter servers, with hot rows, and stock
`ExponentialMovingAverage` beside it under the name "Stock"; the averaging's
options as JSON in the environment variable LAZY_OPTIONS; with LAZY_SYNC set,
a SyncReplicasOptimizer over the chief and one worker, whose own averaging
is "Stock").

Runs tf.estimator.train_and_evaluate (a parameter server blocks in it until
killed). Each training task writes MODEL_DIR/<task>.json with the steps it ran
and where its graph put the variables; the chief also writes its final
evaluation (of the averages) there.
"""

import json
import logging
import os
import sys
import time

import numpy as np

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


LAZY_ROWS, LAZY_DIM, LAZY_IDS, HOT_ROWS = 200, 4, 8, 4
LAZY_DECAY = 0.9


def lazy_input_fn():
    """Each task its own stream: half the lookups on HOT_ROWS rows, so that the
    tasks' steps write the same rows at once; the other half spread over the table."""
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    rng = np.random.RandomState(1 + task["index"] + (100 if task["type"] == "worker" else 0))
    hot = rng.randint(0, HOT_ROWS, size=(4096, LAZY_IDS // 2))
    cold = rng.randint(HOT_ROWS, LAZY_ROWS, size=(4096, LAZY_IDS - LAZY_IDS // 2))
    ids = np.concatenate([hot, cold], axis=1).astype(np.int64)
    labels = rng.randn(4096, 1).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(({"ids": ids}, labels)).batch(8).repeat()


def lazy_model_fn(features, labels, mode, params, config):
    """A table in two parts, one per parameter server, trained by Adagrad; in
    TRAIN, stock dense `ExponentialMovingAverage` named "Stock" updates after
    the apply and before the global step's increment. With params["sync"], a
    SyncReplicasOptimizer over the chief and one worker applies the aggregated
    gradients, and its own `variable_averages` update "Stock"."""
    table = tf1.get_variable("emb", [LAZY_ROWS, LAZY_DIM],
                             initializer=tf1.random_normal_initializer(seed=1),
                             partitioner=tf1.fixed_size_partitioner(2))
    rows = tf1.nn.embedding_lookup(table, features["ids"], partition_strategy="div")
    predictions = tf.reduce_sum(rows, axis=[1, 2])[:, None]
    loss = tf.reduce_mean(tf.square(predictions - labels))
    if mode != tf.estimator.ModeKeys.TRAIN:
        return tf.estimator.EstimatorSpec(mode, loss=loss, predictions={"y": predictions})
    step = tf1.train.get_or_create_global_step()
    parts = list(table)
    stock = tf1.train.ExponentialMovingAverage(LAZY_DECAY, name="Stock")
    if params.get("sync"):
        optimizer = tf1.train.SyncReplicasOptimizer(
            tf1.train.AdagradOptimizer(0.5), replicas_to_aggregate=REPLICAS,
            total_num_replicas=REPLICAS, variable_averages=stock, variables_to_average=parts)
        train_op = optimizer.apply_gradients(zip(tf.gradients(loss, parts), parts), step)
        return tf.estimator.EstimatorSpec(
            mode, loss=loss, train_op=train_op,
            # (No tokens before the first step: each replica's run then ends once
            # the update its gradients went into is applied, before the next can
            # start, so the chief records the weights after every global step.)
            training_hooks=[optimizer.make_session_run_hook(config.is_chief, num_tokens=0)])
    apply = tf1.train.AdagradOptimizer(0.5).apply_gradients(
        zip(tf.gradients(loss, parts), parts))
    # Stock's averages, updated with stock's arithmetic from each part read
    # after the apply. (stock.apply's own update reads a reference variable
    # through the snapshot made with the variable, which TF 1.15 may run before
    # the apply: seen here as averages of the weights a step before.)
    stock.apply(parts)
    with tf.control_dependencies([apply]):
        averaged = tf.group(*[
            tf1.assign_sub(stock.average(part),
                           (stock.average(part) - part.read_value()) * (1 - LAZY_DECAY))
            for part in parts])
    with tf.control_dependencies([averaged]):
        train_op = tf1.assign_add(step, 1)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


class Checkpoints(tf1.train.SessionRunHook):
    """The chief's record of a lazy run: the table after every step, and every
    checkpoint's averages (ours and stock's) as soon as it is written; saved to
    MODEL_DIR/record.npz at the end (keys `weights_<step>`,
    `<name>_<checkpoint step>`)."""

    def __init__(self, model_dir):
        self._model_dir = model_dir
        self._arrays = {}
        self._latest = None

    def begin(self):
        self._table = [v for v in tf1.global_variables() if v.op.name.startswith("emb/part_")
                       and v.op.name.count("/") == 1]
        self._step = tf1.train.get_global_step()

    def _record(self, session):
        step, parts = session.run([self._step, self._table])
        self._arrays["weights_%d" % step] = np.concatenate(parts)
        path = tf.train.latest_checkpoint(self._model_dir)
        if path and path != self._latest:
            self._latest = path
            reader = tf1.train.NewCheckpointReader(path)
            saved = int(reader.get_tensor("global_step"))
            for name in ("ExponentialMovingAverage", "Stock"):
                self._arrays["%s_%d" % (name, saved)] = reader.get_tensor("emb/" + name)
            self._arrays["table_%d" % saved] = reader.get_tensor("emb")

    def after_create_session(self, session, coord):
        self._record(session)

    def after_run(self, run_context, run_values):
        self._record(run_context.session)

    def end(self, session):
        self._record(session)
        np.savez(os.path.join(self._model_dir, "record.npz"), **self._arrays)


class Report(tf1.train.SessionRunHook):
    """Counts this task's steps, records variable placement, and paces the
    steps (a worker starts about 5 s after the chief: with unpaced steps the
    chief would finish alone).

    With `start_with`, the task writes `<path>.started` when its session is
    ready and waits for those files of the tasks named (up to `wait_secs`), so
    that the tasks train at once. With `wait_for`, `end` waits for those files
    (the workers' reports, written after their last step) before returning:
    hooks end in order and the chief's checkpoint saver comes after this one,
    so the final checkpoint then holds every step of every task (else a
    worker step can land after that save)."""

    def __init__(self, path, pace_secs=0.02, wait_for=(), wait_secs=120, start_with=()):
        self._path = path
        self._pace_secs = pace_secs
        self._wait_for = wait_for
        self._wait_secs = wait_secs
        self._start_with = start_with
        self._steps = 0

    def after_create_session(self, session, coord):
        self._devices = {v.op.name: v.device for v in tf1.global_variables()}
        open(self._path + ".started", "w").close()
        for path in self._start_with:
            _wait_for_file(path + ".started", self._wait_secs)

    def after_run(self, run_context, run_values):
        self._steps += 1
        time.sleep(self._pace_secs)

    def end(self, session):
        with open(self._path, "w") as handle:
            json.dump({"steps": self._steps, "devices": self._devices}, handle)
        for path in self._wait_for:
            _wait_for_file(path, self._wait_secs)


def _wait_for_file(path, seconds):
    deadline = time.time() + seconds
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.1)


def main(model_dir, mode, max_steps):
    logger = logging.getLogger("estimator_ema")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    config = tf.estimator.RunConfig(save_checkpoints_steps=10, save_summary_steps=1000,
                                    log_step_count_steps=1000)
    task = "%s%d" % (config.task_type, config.task_id)
    # (SyncReplicas workers block on the chief's queue: the chief must not wait there.)
    workers = ["worker%d" % i for i in range(
        len(json.loads(os.environ["TF_CONFIG"])["cluster"].get("worker") or []))]
    wait_for = ([os.path.join(model_dir, w + ".json") for w in workers]
                if config.is_chief and mode != "sync" and not os.environ.get("LAZY_SYNC")
                else [])
    tasks = ["chief0"] + workers
    hooks = [Report(os.path.join(model_dir, task + ".json"), wait_for=wait_for,
                    start_with=[os.path.join(model_dir, t + ".json") for t in tasks]
                    if mode.startswith("lazy-") else ())]
    evaluator = estimator_ema.averaged_estimator
    if mode.startswith("lazy-"):
        if config.is_chief:
            hooks.insert(0, Checkpoints(model_dir))
        model_fn = lazy_model_fn
        options = json.loads(os.environ.get("LAZY_OPTIONS") or "{}")
        if mode == "lazy-decorator":
            model_fn = estimator_ema.with_ema(model_fn, decay=LAZY_DECAY, **options)
        else:
            hooks.insert(0, estimator_ema.ExponentialMovingAverageHook(LAZY_DECAY, **options))
        estimator = tf.estimator.Estimator(model_fn, model_dir, config=config,
                                           params={"sync": bool(os.environ.get("LAZY_SYNC"))})
        tf.estimator.train_and_evaluate(
            estimator, tf.estimator.TrainSpec(lazy_input_fn, max_steps=max_steps, hooks=hooks),
            tf.estimator.EvalSpec(lazy_input_fn, steps=1))
        return
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
