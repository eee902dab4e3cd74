"""Shared fixtures: a deterministic linear model and its numpy oracles."""

import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1
IS_TF1 = tf.__version__.startswith("1.")
TF_VERSION = tuple(int(part) for part in tf.__version__.split(".")[:2])

# The console script installed beside this interpreter.
COMMAND = os.path.join(os.path.dirname(sys.executable), "estimator-ema")

BATCH = 8
FEATURES = 3
LEARNING_RATE = 0.1


def make_data(n=32, seed=0, noise=0.5):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, FEATURES).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + noise * rng.randn(n, 1)).astype(np.float32)
    return x, y


DATA = make_data()


def input_fn():
    """Fixed order, no shuffle: batch i is rows [8i, 8i+8) modulo the data."""
    x, y = DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()


def keras_sgd(learning_rate):
    optimizers = tf.keras.optimizers
    legacy = getattr(optimizers, "legacy", None)
    return (legacy or optimizers).SGD(learning_rate)


def linear_model_fn(features, labels, mode, params):
    """y = x @ w + b, MSE, plain SGD with a v1 or a Keras optimizer."""
    keras = params.get("optimizer", "v1") == "keras"
    # Keras optimizers need resource variables, which TF 1.15 does not default to.
    w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                         use_resource=keras or None)
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer(),
                         use_resource=keras or None)
    predictions = tf.matmul(features, w) + b
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf.reduce_mean(tf.square(predictions - labels))
    global_step = tf1.train.get_or_create_global_step()
    if keras:
        optimizer = keras_sgd(LEARNING_RATE)
        grads = tf.gradients(loss, [w, b])
        apply_op = optimizer.apply_gradients(zip(grads, [w, b]))
        with tf.control_dependencies([apply_op]):
            train_op = tf1.assign_add(global_step, 1)
    elif params.get("optimizer") == "momentum":
        train_op = tf1.train.MomentumOptimizer(LEARNING_RATE, 0.5).minimize(
            loss, global_step=global_step)
    else:
        train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
            loss, global_step=global_step)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                      predictions={"y": predictions})


def run_config(**kwargs):
    kwargs.setdefault("save_summary_steps", 1000)
    kwargs.setdefault("log_step_count_steps", 1000)
    return tf.estimator.RunConfig(tf_random_seed=0, **kwargs)


def estimator(model_dir, optimizer="v1", model_fn=linear_model_fn, config=None, **kwargs):
    return tf.estimator.Estimator(model_fn, str(model_dir), config=config or run_config(),
                                  params={"optimizer": optimizer}, **kwargs)


def sgd_weights(steps, w=None, b=None, start_step=0):
    """Numpy oracle of the linear model's SGD: [(w, b) before step 1, after 1, ...]."""
    x, y = (a.astype(np.float64) for a in DATA)
    w = np.zeros((FEATURES, 1)) if w is None else np.asarray(w, np.float64)
    b = np.zeros((1,)) if b is None else np.asarray(b, np.float64)
    batches = len(x) // BATCH
    out = [(w.copy(), b.copy())]
    for step in range(start_step, start_step + steps):
        i = step % batches
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        err = xb @ w + b - yb
        w = w - LEARNING_RATE * 2.0 * xb.T @ err / BATCH
        b = b - LEARNING_RATE * 2.0 * err.sum(axis=0) / BATCH
        out.append((w.copy(), b.copy()))
    return out


def ema_oracle(trajectory, decay, num_updates=True, every_n_steps=1, zero_debias=False,
               first_step=1):
    """Numpy oracle of the averages after the trajectory's last step.

    trajectory[0] is the weights the averages start from; trajectory[i] the
    weights after global step first_step + i - 1.
    """
    averages = [np.array(p, np.float64) for p in trajectory[0]]
    biased = [np.zeros_like(a) for a in averages]
    count = 0
    for offset, params in enumerate(trajectory[1:]):
        n = first_step + offset
        if n % every_n_steps:
            continue
        d = min(decay, (1.0 + n) / (10.0 + n)) if num_updates else decay
        d = d ** every_n_steps
        if zero_debias:
            count += 1
            biased = [bv - (bv - p) * (1 - d) for bv, p in zip(biased, params)]
            averages = [bv / (1 - d ** count) for bv in biased]
        else:
            averages = [a - (a - p) * (1 - d) for a, p in zip(averages, params)]
    return averages


def swa_oracle(trajectory, start_step, average_period=1):
    """Numpy oracle of stochastic weight averaging: (averages, count).

    trajectory[s] is the weights after global step s (trajectory[0] the weights
    training starts from). The weights after step s enter the mean iff
    s >= start_step and (s - start_step) % average_period == 0; before the first
    entry the averages are the latest weights.
    """
    entered = [params for s, params in enumerate(trajectory)
               if s >= start_step and (s - start_step) % average_period == 0]
    if not entered:
        return [np.array(p, np.float64) for p in trajectory[-1]], 0
    averages = [np.mean([np.asarray(params[k], np.float64) for params in entered], axis=0)
                for k in range(len(trajectory[0]))]
    return averages, len(entered)


def summary_tags(model_dir, hook, steps=3):
    """Trains the linear model with `hook`, summaries every step; the tags written."""
    est = tf.estimator.Estimator(
        linear_model_fn, str(model_dir),
        config=tf.estimator.RunConfig(save_summary_steps=1, log_step_count_steps=1000),
        params={})
    est.train(input_fn, steps=steps, hooks=[hook])
    tags = set()
    for path in tf1.gfile.Glob(str(model_dir / "events.out.tfevents.*")):
        for event in tf1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def load(model_dir, name):
    return tf.train.load_variable(str(model_dir), name)


@pytest.fixture
def model_dir(tmp_path):
    return tmp_path / "model"


EMA = "ExponentialMovingAverage"
SWA = "StochasticWeightAverage"


def free_ports(count):
    """`count` TCP ports free now on every interface (TensorFlow's servers bind
    the wildcard address, so a port free on 127.0.0.1 alone may not be)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def trained_with_hook(model_dir, steps=10, **hook_kwargs):
    """The linear model trained `steps` steps with ExponentialMovingAverageHook(0.8)."""
    import estimator_ema
    est = estimator(model_dir)
    est.train(input_fn, steps=steps,
              hooks=[estimator_ema.ExponentialMovingAverageHook(0.8, **hook_kwargs)])
    return est


def recording_fetches(hook):
    """`hook`, recording in `hook.fetched`, run by run since it last began,
    whether it asked the run to fetch anything."""
    begin, before_run = hook.begin, hook.before_run

    def beginning():
        begin()
        hook.fetched = []

    def recording(run_context):
        args = before_run(run_context)
        hook.fetched.append(args is not None)
        return args

    hook.begin, hook.before_run = beginning, recording
    return hook


@pytest.fixture
def hook_trained(model_dir):
    return trained_with_hook(model_dir)


def linear_graph():
    """The serving graph of the linear model: its variables and a global step."""
    graph = tf.Graph()
    with graph.as_default():
        w = tf1.get_variable("linear/w", [FEATURES, 1])
        b = tf1.get_variable("linear/b", [1])
        tf1.train.get_or_create_global_step()
    return graph, w, b


def save_checkpoint(prefix, values, global_step=None):
    """Saves `{name: numpy value}` as a name-based checkpoint; returns its prefix."""
    graph = tf.Graph()
    with graph.as_default():
        for name, value in values.items():
            tf1.Variable(value, name=name)
        saver = tf1.train.Saver()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            return saver.save(session, str(prefix), global_step=global_step)


def save_stock_ema_checkpoint(model_dir, steps=5, decay=0.9):
    """Stock TF1 code, slim/EfficientNet style: Momentum SGD on the linear model
    and `ExponentialMovingAverage.apply(trainable_variables())` after the train
    op, saved by a plain `tf.compat.v1.train.Saver`. Returns the prefix."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, FEATURES])
        y = tf1.placeholder(tf.float32, [None, 1])
        w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer())
        b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
        loss = tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y))
        global_step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.MomentumOptimizer(LEARNING_RATE, 0.9).minimize(
            loss, global_step=global_step)
        ema = tf1.train.ExponentialMovingAverage(decay, num_updates=global_step)
        with tf.control_dependencies([train_op]):
            train_op = ema.apply(tf1.trainable_variables())
        saver = tf1.train.Saver()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            for step in range(steps):
                i = step % (len(DATA[0]) // BATCH)
                rows = slice(i * BATCH, (i + 1) * BATCH)
                session.run(train_op, {x: DATA[0][rows], y: DATA[1][rows]})
            os.makedirs(str(model_dir), exist_ok=True)
            return saver.save(session, os.path.join(str(model_dir), "model.ckpt"),
                              global_step=global_step)


def serving_input_receiver_fn():
    x = tf1.placeholder(tf.float32, [None, FEATURES], name="x")
    return tf.estimator.export.TensorServingInputReceiver(x, {"x": x})


LOADERS = [
    pytest.param("tf.saved_model.load", marks=pytest.mark.skipif(
        IS_TF1, reason="TF 1.15 loads TF1 SavedModels with the v1 loader")),
    "loader.load",
]


def serve(export_dir, x, loader):
    """Runs the SavedModel's serving signature on `x` and returns output 'y'."""
    export_dir = export_dir.decode() if isinstance(export_dir, bytes) else str(export_dir)
    if loader == "tf.saved_model.load":
        signature = tf.saved_model.load(export_dir).signatures["serving_default"]
        return signature(x=tf.constant(x))["y"].numpy()
    with tf1.Session(graph=tf.Graph()) as session:
        meta_graph = tf1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta_graph.signature_def["serving_default"]
        return session.run(signature.outputs["y"].name, {signature.inputs["x"].name: x})


@pytest.fixture
def slim_compatible(monkeypatch):
    """tf_slim 1.1.0 (the latest) still reads `ops.Tensor`, which TF 2.15 moved
    out of `tensorflow.python.framework.ops`; put the alias back for the test."""
    from tensorflow.python.framework import ops
    if not hasattr(ops, "Tensor"):
        monkeypatch.setattr(ops, "Tensor", tf.Tensor, raising=False)
