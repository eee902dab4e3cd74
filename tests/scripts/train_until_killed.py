"""Trains the conftest linear model with averaging, in its own process.

usage: train_until_killed.py MODEL_DIR {hook,decorator}[-embedding] MAX_STEPS [KILL_AT_STEP]

With "-embedding", the embedding model of test_lazy_rows.py (lazy rows), trained
with SGD.

With KILL_AT_STEP the process sends itself SIGKILL right after that global step,
as a machine failure would: no hook's end(), no final checkpoint.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

import estimator_ema  # noqa: E402
from conftest import input_fn, linear_model_fn, tf1  # noqa: E402

DECAY = 0.8


class KillAt(tf1.train.SessionRunHook):
    def __init__(self, step):
        self._step = step

    def begin(self):
        self._global_step = tf1.train.get_global_step()

    def before_run(self, run_context):
        return tf1.train.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        if run_values.results + 1 >= self._step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(model_dir, mode, max_steps, kill_at=None):
    config = tf.estimator.RunConfig(tf_random_seed=0, save_checkpoints_steps=4,
                                    save_summary_steps=1000, log_step_count_steps=1000)
    hooks = [KillAt(kill_at)] if kill_at else []
    mode, _, model = mode.partition("-")
    if model == "embedding":
        from test_lazy_rows import embedding_model_fn as model_fn, ids_input_fn as data_fn
        params = {"optimizer": "sgd", "parts": 0}
    else:
        model_fn, data_fn, params = linear_model_fn, input_fn, {"optimizer": "v1"}
    if mode == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=DECAY)
    else:
        hooks.insert(0, estimator_ema.ExponentialMovingAverageHook(DECAY))
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config, params=params)
    estimator.train(data_fn, max_steps=max_steps, hooks=hooks)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]),
         int(sys.argv[4]) if len(sys.argv) > 4 else None)
