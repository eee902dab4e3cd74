"""Lazy averages of embedding tables: exact in every checkpoint, every row."""

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import EMA, IS_TF1, TF_VERSION, keras_sgd, run_config, tf1
from test_ordering import CheckpointReader, Recorder, check_every_checkpoint, ema_of

ROWS, DIM, IDS, BATCH = 12, 3, 2, 4
STEPS = 9


def ids_input_fn():
    """Batch i looks up rows from a window that moves by one row a step, so
    most rows go untouched for several steps, then are written again."""
    rng = np.random.RandomState(0)
    ids = np.stack([(i + rng.randint(0, 4, size=(BATCH, IDS))) % ROWS
                    for i in range(40)]).reshape(-1, IDS).astype(np.int64)
    labels = rng.randn(len(ids), 1).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(({"ids": ids}, labels)).batch(BATCH)


OPTIMIZERS = {
    "sgd": lambda: tf1.train.GradientDescentOptimizer(0.5),
    "adagrad": lambda: tf1.train.AdagradOptimizer(0.5),
    "ftrl": lambda: tf1.train.FtrlOptimizer(0.5),
    "momentum": lambda: tf1.train.MomentumOptimizer(0.5, 0.9),
    "keras": lambda: keras_sgd(0.5),
}


def embedding_model_fn(features, labels, mode, params):
    """A table of ROWS x DIM looked up by ids, mean-pooled, a dense head.

    params: "optimizer" (a key of OPTIMIZERS), "parts" (0: not partitioned),
    and optionally "lookup": "read" gathers from a read of the whole table
    (no lookup of the table's own rows), "ref" makes reference variables,
    "half" a float16 table; "dtype" the table's dtype name ("float32"),
    "row_shape" the shape of its rows ([DIM]), "axis" the axis it is
    partitioned along (0; along 1 each part is looked up on its own); "step"
    the global step's increment (1);
    "update_op" adds a dense write of the table to UPDATE_OPS; "saver" puts a
    Saver of its own in the Scaffold; "clip" clips the head after the step (the
    global step's increment first)."""
    keras = params["optimizer"] == "keras"
    lookup = params.get("lookup")
    axis = params.get("axis", 0)
    partitioner = (tf1.fixed_size_partitioner(params["parts"], axis) if params["parts"]
                   else None)
    use_resource = True if keras else (False if lookup == "ref" else None)
    row_shape = params.get("row_shape", [DIM])
    table = tf1.get_variable("embedding/table", [ROWS] + row_shape, partitioner=partitioner,
                             dtype="float16" if lookup == "half" else params.get("dtype",
                                                                                 "float32"),
                             initializer=tf1.random_normal_initializer(seed=1),
                             use_resource=use_resource)
    width = int(np.prod(row_shape))
    head = tf1.get_variable("head/w", [width, 1], initializer=tf1.ones_initializer(),
                            use_resource=use_resource)
    if params.get("update_op"):  # a dense write of the table that the train op does not run
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, tf1.assign(table, table * 0.5))
    if lookup == "read":
        rows = tf.gather(table.read_value(), features["ids"])
    elif axis:
        rows = tf.concat([tf.gather(part, features["ids"]) for part in table], axis + 1)
    else:
        rows = tf.nn.embedding_lookup(table, features["ids"])
    rows = tf.reshape(rows, [-1, IDS, width])
    pooled = tf.reduce_mean(tf.cast(rows, tf.float32), axis=1)
    predictions = tf.matmul(pooled, head)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    step = tf1.train.get_or_create_global_step()
    variables = [head] + (list(table) if params["parts"] else [table])
    optimizer = OPTIMIZERS[params["optimizer"]]()
    if keras or "step" in params:
        apply = optimizer.apply_gradients(zip(tf.gradients(loss, variables), variables))
        with tf.control_dependencies([apply]):
            train_op = tf1.assign_add(step, params.get("step", 1))
    else:
        train_op = optimizer.minimize(loss, step, var_list=variables)
    if params.get("clip"):
        with tf.control_dependencies([train_op]):
            train_op = tf1.assign(head, tf.clip_by_value(head, -0.9, 0.9)).op
    scaffold = tf1.train.Scaffold(saver=tf1.train.Saver()) if params.get("saver") else None
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, scaffold=scaffold,
                                      predictions={"y": predictions})


def train(model_dir, how, optimizer="sgd", parts=0, steps=STEPS, params=None, save_steps=2,
          hooks=(), saving_listeners=(), **options):
    options.setdefault("decay", 0.8)
    model_fn = embedding_model_fn
    hooks = list(hooks)
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, **options)
    else:
        hooks.append(estimator_ema.ExponentialMovingAverageHook(**options))
    params = dict(params or {}, optimizer=optimizer, parts=parts)
    est = tf.estimator.Estimator(model_fn, str(model_dir), params=params,
                                 config=run_config(save_checkpoints_steps=save_steps))
    recorder, reader = Recorder(), CheckpointReader(model_dir, EMA)
    est.train(ids_input_fn, steps=steps, hooks=hooks + [recorder],
              saving_listeners=[reader] + list(saving_listeners))
    return est, recorder, reader


def whole(values, axis=0):
    """`{name: value}` with a partitioned variable's parts (`<v>/part_<i>`)
    joined along `axis`, under `<v>`, as checkpoints hold them."""
    out, parts = {}, {}
    for name, value in values.items():
        full, _, part = name.rpartition("/part_")
        if full and part.isdigit():
            parts.setdefault(full, {})[int(part)] = value
        else:
            out[name] = value
    out.update({full: np.concatenate([p[i] for i in sorted(p)], axis)
                for full, p in parts.items()})
    return out


def check(recorder, reader, decay=0.8, every_n_steps=1, num_updates=True, axis=0):
    recorder.record = [(step, whole(values, axis)) for step, values in recorder.record]
    def oracle(record, start):
        if num_updates:
            return ema_of(record, decay, start, every_n_steps)
        averages = {k: np.asarray(v, np.float64) for k, v in start.items()}
        for step, values in record:
            if step % every_n_steps == 0:
                d = decay ** every_n_steps
                averages = {k: a - (a - values[k]) * (1 - d) for k, a in averages.items()}
        return averages
    return check_every_checkpoint(recorder, reader, oracle)


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="estimator_ema")


def lazy_tables(caplog, model_dir=None):
    """The variables that the log says are averaged lazily, in log order; with
    a `model_dir`, checked first to hold no lazy bookkeeping in its latest
    checkpoint (plain averages under the stock names only)."""
    if model_dir is not None:
        keys = [k for k, _ in tf.train.list_variables(str(model_dir))]
        assert not [k for k in keys if "/lazy_" in k], keys
    return [name for names in re.findall(r"(\[[^]]*\]) written only in rows, averaged lazily",
                                         caplog.text) for name in ast.literal_eval(names)]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_lazy_rows_are_exact_in_every_checkpoint(tmp_path, how, optimizer, caplog):
    caplog.set_level(logging.INFO, logger="estimator_ema")
    _, recorder, reader = train(tmp_path, how, optimizer)
    assert check(recorder, reader) == len(reader.saved)
    assert lazy_tables(caplog, tmp_path) == ["embedding/table"]


@pytest.mark.parametrize("num_updates", [True, False], ids=["warmup", "constant"])
@pytest.mark.parametrize("every_n_steps", [1, 3])
@pytest.mark.parametrize("parts", [0, 2], ids=["plain", "partitioned"])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "ftrl", "keras"])
@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_options_and_partitions(tmp_path, caplog, how, optimizer, parts, every_n_steps,
                                num_updates):
    _, recorder, reader = train(tmp_path, how, optimizer, parts=parts,
                                every_n_steps=every_n_steps, num_updates=num_updates)
    assert check(recorder, reader, every_n_steps=every_n_steps,
                 num_updates=num_updates) == len(reader.saved)
    assert lazy_tables(caplog, tmp_path) == (
        ["embedding/table/part_%d" % i for i in range(parts)] or ["embedding/table"])
    # The partitioned table's average is saved whole, under the full name.
    assert tf.train.load_variable(str(tmp_path), "embedding/table/" + EMA).shape == (ROWS, DIM)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_dense_weight_written_after_the_step_is_averaged_after_that_write(tmp_path, caplog,
                                                                            how):
    # With lazy rows the dense head's update follows the head's own writes,
    # not the whole step: a clip after the global step's increment is one.
    _, recorder, reader = train(tmp_path, how, "adagrad", params={"clip": True})
    assert check(recorder, reader) == len(reader.saved)
    assert lazy_tables(caplog, tmp_path) == ["embedding/table"]
    assert np.abs(recorder.record[1][1]["head/w"]).max() == pytest.approx(0.9)


def resume(est, how, recorder, reader, steps):
    """Trains `est` `steps` steps more, adding what they record and save to
    `recorder` and `reader`."""
    resumed, more = Recorder(), CheckpointReader(reader.model_dir, EMA)
    est.train(ids_input_fn, steps=steps, hooks=[resumed] + (
        [estimator_ema.ExponentialMovingAverageHook(0.8)] if how == "hook" else []),
        saving_listeners=[more])
    recorder.record += resumed.record[1:]
    reader.saved += more.saved


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_resumed_run_continues_exactly(tmp_path, how):
    est, recorder, reader = train(tmp_path, how, "sgd", steps=5)
    resume(est, how, recorder, reader, 4)
    assert check(recorder, reader) == len(reader.saved)


@pytest.mark.parametrize("row_shape, dtype", [
    ([], "float32"), ([2, 3], "float32"), ([DIM], "float64"), ([], "float64")],
    ids=["vector", "rank3", "float64", "float64-vector"])
@pytest.mark.parametrize("parts", [0, 2], ids=["plain", "partitioned"])
@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_tables_of_any_row_shape_and_float64_are_lazy_and_exact(tmp_path, caplog, how, parts,
                                                                row_shape, dtype):
    """Each row's state is one row of the average variable (its average
    flattened, then its float64 row clock in two float32 columns, or one
    float64): saved, restored and read back in the table's shape."""
    params = {"row_shape": row_shape, "dtype": dtype}
    est, recorder, reader = train(tmp_path, how, "adagrad", parts=parts, steps=5, params=params)
    resume(est, how, recorder, reader, 4)
    assert check(recorder, reader) == len(reader.saved)
    assert lazy_tables(caplog, tmp_path) == (
        ["embedding/table/part_%d" % i for i in range(parts)] or ["embedding/table"]) * 2
    saved = tf.train.load_variable(str(tmp_path), "embedding/table/" + EMA)
    assert (saved.shape, saved.dtype) == (tuple([ROWS] + row_shape), np.dtype(dtype))


def test_a_table_partitioned_along_its_rows_width_is_averaged_densely(tmp_path, caplog):
    _, recorder, reader = train(tmp_path, "hook", "sgd", parts=2, steps=4,
                                params={"axis": 1})
    assert not lazy_tables(caplog, tmp_path)
    assert ("['embedding/table/part_0', 'embedding/table/part_1'] written only in rows, "
            "averaged densely: partitioned along an axis other than the first") in caplog.text
    assert check(recorder, reader, axis=1) == len(reader.saved)


def test_helpers_see_exact_values_and_no_bookkeeping(tmp_path):
    est, recorder, reader = train(tmp_path, "hook", "adagrad")
    averages = estimator_ema.read_averages(str(tmp_path))
    assert sorted(averages) == ["embedding/table", "head/w"]
    np.testing.assert_allclose(averages["embedding/table"],
                               reader.saved[-1][1]["embedding/table"], rtol=1e-6)
    out = estimator_ema.write_averaged_checkpoint(str(tmp_path), str(tmp_path / "avg/model.ckpt"))
    keys = [k for k, _ in tf.train.list_variables(out)]
    assert not [k for k in keys if "lazy_" in k or EMA in k]
    np.testing.assert_allclose(tf.train.load_variable(out, "embedding/table"),
                               averages["embedding/table"], rtol=1e-6)


@pytest.mark.parametrize("options, reason", [
    (dict(lazy_rows=False), "lazy_rows=False"),
    (dict(zero_debias=True), "lazy rows do not combine with zero_debias=True"),
    (dict(skip_nonfinite=True), "lazy rows do not combine with skip_nonfinite=True"),
])
def test_dense_when_asked_or_an_option_needs_it(tmp_path, caplog, options, reason):
    train(tmp_path, "hook", "sgd", steps=2, **options)
    assert not lazy_tables(caplog, tmp_path)
    assert "['embedding/table'] written only in rows, averaged densely: %s" % reason in caplog.text


def test_swa_averages_densely_and_says_so(tmp_path, caplog):
    est = tf.estimator.Estimator(embedding_model_fn, str(tmp_path),
                                 params={"optimizer": "sgd", "parts": 0})
    est.train(ids_input_fn, steps=2,
              hooks=[estimator_ema.StochasticWeightAveragingHook(start_step=0)])
    assert not lazy_tables(caplog, tmp_path)
    assert "averaged densely: stochastic weight averages are dense" in caplog.text


def test_a_dense_write_keeps_the_dense_update(tmp_path, caplog):
    # v1 Adam writes every row of the table: no lazy rows.
    OPTIMIZERS["adam"] = lambda: tf1.train.AdamOptimizer(0.1)
    try:
        _, recorder, reader = train(tmp_path, "hook", "adam", steps=3)
    finally:
        del OPTIMIZERS["adam"]
    assert not lazy_tables(caplog, tmp_path)
    assert check(recorder, reader) == len(reader.saved)


@pytest.mark.parametrize("params, reason", [
    ({"step": 2}, "the training step does not add exactly one to the global step"),
    ({"lookup": "half"}, "lazy rows need float32 or float64"),
] + ([] if IS_TF1 else [
    ({"lookup": "ref"}, "reference variables on TF 2 (its tf.cond cannot assign them)")]),
    ids=lambda value: value if isinstance(value, str) else "-".join(map(str, value.values())))
def test_dense_where_lazy_rows_cannot_be_exact(tmp_path, caplog, params, reason):
    _, recorder, reader = train(tmp_path, "hook", "sgd", steps=4, params=params)
    assert "['embedding/table'] written only in rows, averaged densely: %s" % reason in caplog.text
    assert not lazy_tables(caplog, tmp_path)
    if params.get("lookup") == "ref":  # (float16 and a step of two have no oracle here)
        assert check(recorder, reader) == len(reader.saved)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_dense_write_in_update_ops_keeps_the_dense_update(tmp_path, caplog, how):
    _, recorder, reader = train(tmp_path, how, "sgd", steps=4, params={"update_op": True})
    assert not lazy_tables(caplog, tmp_path)
    assert check(recorder, reader) == len(reader.saved)


def test_a_scaffold_saver_keeps_the_dense_update(tmp_path, caplog):
    # Checkpoints written by a Saver the package cannot extend could not be made
    # to hold plain averages (this one, built before the hook, saves none).
    train(tmp_path, "hook", "sgd", steps=4, params={"saver": True})
    assert not lazy_tables(caplog, tmp_path)
    assert "averaged densely: the graph has no default Saver to extend" in caplog.text


def training_graph(device=None, **params):
    """(graph, train op) of the embedding model's TRAIN mode (on `device`), with
    the Saver Estimator adds."""
    graph = tf.Graph()
    with graph.as_default(), tf.device(device):
        ids, labels = tf.constant([[0, 1], [2, 3]], tf.int64), tf.zeros([2, 1])
        spec = embedding_model_fn({"ids": ids}, labels, tf.estimator.ModeKeys.TRAIN,
                                  dict(params, optimizer="sgd", parts=0))
        tf1.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(defer_build=True))
    return graph, spec.train_op


def begin_hook(device=None):
    graph, _ = training_graph(device)
    with graph.as_default():
        estimator_ema.ExponentialMovingAverageHook(0.8).begin()
    return graph


@pytest.mark.parametrize("tf_config", [
    {"cluster": {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]},
     "task": {"type": "chief", "index": 0}},
    {"cluster": {"chief": ["a:1"], "ps": ["c:1"]}, "task": {"type": "chief", "index": 0}},
    None,
], ids=["two-training-tasks", "a-chief-alone", "ps-without-tf-config"])
def test_tables_on_parameter_servers_are_lazy(monkeypatch, caplog, tf_config):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    graph = begin_hook("/job:ps/task:0")
    assert lazy_tables(caplog) == ["embedding/table"]
    # The bookkeeping of rows runs beside the table, on its parameter server:
    # only scalars (the decay) are computed elsewhere.
    rows = [op for op in graph.get_operations() if op.name.startswith(EMA + "_rows/")
            and (not op.outputs or any(t.shape.ndims != 0 for t in op.outputs))]
    assert len(rows) > 10
    assert [op.name for op in rows if op.device != "/job:ps/task:0"] == []


def test_on_parameter_servers_one_float64_scalar_crosses_and_a_fold_is_a_few_ops():
    """A table in two parts on two ps, a dense head and the global step on a
    third: per step, each ps that holds averages receives one tensor from the
    averaging's ops elsewhere, the clock increment (a float64 scalar), and each
    part's fold runs a few ops there (not counting constants, nor the identities
    TF 2.4 puts after a resource read)."""
    graph = tf.Graph()
    with graph.as_default(), tf1.device(tf1.train.replica_device_setter(ps_tasks=3)):
        step = tf1.train.get_or_create_global_step()
        table = tf1.get_variable("table", [100, 4], partitioner=tf1.fixed_size_partitioner(2))
        head = tf1.get_variable("head", [4, 1])
        pooled = tf.reduce_mean(tf1.nn.embedding_lookup(table, tf.constant([[1, 2], [3, 60]])), 1)
        loss = tf.reduce_mean(tf.matmul(pooled, head))
        train_op = tf1.train.AdagradOptimizer(0.1).minimize(loss, global_step=step)
        graph.add_to_collection(tf1.GraphKeys.TRAIN_OP, train_op)
        graph.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(defer_build=True))
        hook = estimator_ema.ExponentialMovingAverageHook(0.9)
        hook.begin()
    # Every update is woven into the step: the hook fetches nothing.
    (mode, _, _), = hook._plans.values()
    assert mode == "woven"
    ran = estimator_ema._graphs.ancestors([train_op]) | {train_op}
    averaging = [op for op in ran if op.name.startswith(EMA + "_")]
    places = {v.op.name: v.device for v in (step, head) + tuple(table)}
    received = {}
    for op in averaging:
        for tensor in op.inputs:
            if tensor.op.device != op.device and tensor.op.name.startswith(EMA + "_"):
                received.setdefault(op.device, set()).add(tensor)
    assert sorted(received) == sorted({places["table/part_0"], places["table/part_1"],
                                       places["head"]} - {places["global_step"]})
    for tensors in received.values():
        (tensor,) = tensors
        assert (tensor.dtype, tensor.shape.ndims) == (tf.float64, 0)
    for part in ("table/part_0", "table/part_1"):
        fold = [op for op in averaging if op.name.startswith(EMA + "_rows/")
                and op.device == places[part] and op.type not in ("Const", "Identity")]
        assert 12 <= len(fold) <= 17, sorted(op.type for op in fold)


def test_a_run_that_writes_a_lazy_table_otherwise_is_refused():
    graph, train_op = training_graph()
    with graph.as_default():
        table = [v for v in tf1.global_variables() if v.op.name == "embedding/table"][0]
        other = tf1.scatter_add(table, [0], tf.zeros([1, DIM]))
        with tf1.train.MonitoredSession(
                hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)]) as session:
            with pytest.raises(RuntimeError, match="ScatterAdd.*not the writes their lazy rows"):
                session.run([train_op, other])


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_rows_the_forward_pass_does_not_look_up_are_read_before_the_writes(tmp_path, caplog,
                                                                          how):
    # The table is gathered from a read of the whole of it: the old rows are
    # not an embedding lookup's, so the averager reads them itself.
    _, recorder, reader = train(tmp_path, how, "adagrad", params={"lookup": "read"})
    assert check(recorder, reader) == len(reader.saved)
    assert lazy_tables(caplog, tmp_path) == ["embedding/table"]


@pytest.mark.parametrize("decay", [0.05, 0.0])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_any_decay_is_lazy_and_exact(tmp_path, caplog, how, optimizer, decay):
    # The clock advances by -log(decay) a step and is never rescaled: a small
    # decay, even 0, over many steps stays exact.
    _, recorder, reader = train(tmp_path, how, optimizer, steps=25, decay=decay,
                                num_updates=False, save_steps=8)
    assert check(recorder, reader, decay=decay, num_updates=False) == len(reader.saved) >= 4
    assert lazy_tables(caplog, tmp_path) == ["embedding/table"]


def test_two_averages_of_one_table_are_both_lazy_and_exact(tmp_path, caplog):
    fast = CheckpointReader(tmp_path, "Fast")
    est, recorder, reader = train(tmp_path, "decorator", "adagrad", saving_listeners=[fast],
                                  hooks=[estimator_ema.ExponentialMovingAverageHook(
                                      0.5, name="Fast")])
    assert lazy_tables(caplog, tmp_path) == ["embedding/table"] * 2
    assert check(recorder, reader) == len(reader.saved)
    assert check(recorder, fast, decay=0.5) == len(fast.saved) == len(reader.saved)


@pytest.mark.parametrize("first, then", [(False, True), (True, False)],
                         ids=["dense-then-lazy", "lazy-then-dense"])
def test_a_run_resumes_exactly_when_lazy_rows_are_switched(tmp_path, caplog, first, then):
    est, recorder, reader = train(tmp_path, "hook", "adagrad", steps=5, lazy_rows=first)
    assert bool(lazy_tables(caplog, tmp_path)) == first
    caplog.clear()
    resumed, more = Recorder(), CheckpointReader(tmp_path, EMA)
    est.train(ids_input_fn, steps=4, saving_listeners=[more], hooks=[
        estimator_ema.ExponentialMovingAverageHook(0.8, lazy_rows=then), resumed])
    # Each checkpoint's averages are plain: nothing is restarted ("no averages").
    assert "has no averages" not in caplog.text
    recorder.record += resumed.record[1:]
    reader.saved += more.saved
    assert check(recorder, reader) == len(reader.saved) >= 6
    assert bool(lazy_tables(caplog, tmp_path)) == then


SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts",
                      "train_until_killed.py")


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_run_killed_after_a_checkpoint_resumes_exactly(tmp_path, how):
    # Killed right after step 5: the last checkpoint is step 4.
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path), how + "-embedding", "20",
                             "5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert tf.train.load_variable(str(tmp_path), "global_step") == 4
    restored = {"embedding/table": tf.train.load_variable(str(tmp_path),
                                                          "embedding/table/" + EMA)}
    model_fn = embedding_model_fn
    hooks = [Recorder()]
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=0.8)
    else:
        hooks.insert(0, estimator_ema.ExponentialMovingAverageHook(0.8))
    est = tf.estimator.Estimator(model_fn, str(tmp_path),
                                 params={"optimizer": "sgd", "parts": 0},
                                 config=run_config(save_checkpoints_steps=2))
    reader = CheckpointReader(tmp_path, EMA)
    est.train(ids_input_fn, steps=6, hooks=hooks, saving_listeners=[reader])
    record = hooks[-1].record[1:]
    for step, averages in reader.saved:
        expected = ema_of([r for r in record if r[0] <= step], 0.8, restored)
        np.testing.assert_allclose(averages["embedding/table"], expected["embedding/table"],
                                   rtol=1e-5, atol=1e-6, err_msg="checkpoint %d" % step)
    assert [step for step, _ in reader.saved] == [4, 6, 8, 10]


def canned_input_fn():
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 50, size=(64, 3)).astype(np.int64)
    labels = rng.randint(0, 2, size=(64, 1)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(({"ids": ids}, labels)).batch(8).repeat()


def canned(kind, model_dir):
    ids = tf.feature_column.categorical_column_with_identity("ids", 50)
    embedding = tf.feature_column.embedding_column(ids, 4)
    config = run_config(save_checkpoints_steps=2)
    v2 = {"optimizer": "Adagrad"} if not IS_TF1 else {}
    return {
        "v2_linear": lambda: tf.estimator.LinearClassifier([ids], model_dir=model_dir,
                                                           config=config, **v2),
        "v1_linear": lambda: tf1.estimator.LinearClassifier([ids], model_dir=model_dir,
                                                            config=config),
        "v2_dnn": lambda: tf.estimator.DNNClassifier([4], [embedding], model_dir=model_dir,
                                                     config=config, **v2),
        "v1_dnn": lambda: tf1.estimator.DNNClassifier([4], [embedding], model_dir=model_dir,
                                                      config=config),
    }[kind]()


@pytest.mark.parametrize("kind", ["v2_linear", "v1_linear", pytest.param("v2_dnn", marks=(
    pytest.mark.skipif(sys.version_info >= (3, 11) and (2, 12) <= TF_VERSION <= (2, 13),
                       reason="tensorflow-estimator 2.12 and 2.13 make a v2 DNN's named "
                              "optimizer with inspect.getargspec, which Python 3.11 removed"))),
    "v1_dnn"])
def test_canned_estimators_tables_are_lazy_and_exact(tmp_path, caplog, kind):
    recorder, reader = Recorder(), CheckpointReader(tmp_path, EMA)
    canned(kind, str(tmp_path)).train(
        canned_input_fn, steps=7, saving_listeners=[reader],
        hooks=[estimator_ema.ExponentialMovingAverageHook(0.8), recorder])
    assert check(recorder, reader) == len(reader.saved) == 5
    assert len(lazy_tables(caplog, tmp_path)) == 1


def test_a_table_whose_rows_shape_is_unknown_is_averaged_densely(caplog):
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        table = tf.Variable(tf.ones([ROWS, DIM]), name="table",
                            shape=tf.TensorShape([ROWS, None]))
        rows = tf.reshape(tf1.nn.embedding_lookup(table, tf.constant([1, 2])), [2, DIM])
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(
            tf.reduce_sum(rows), global_step=step)
        graph.add_to_collection(tf1.GraphKeys.TRAIN_OP, train_op)
        graph.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(defer_build=True))
        estimator_ema.ExponentialMovingAverageHook(0.9).begin()
    assert not lazy_tables(caplog)
    assert ("['table'] written only in rows, averaged densely: rows of an unknown shape"
            in caplog.text)
