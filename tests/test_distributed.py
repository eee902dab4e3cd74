"""Real multi-process clusters on 127.0.0.1: parameter server, chief and worker,
each a process with its own TF_CONFIG, bounded in time and killed at the end."""

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import IS_TF1, DATA, ema_oracle, estimator, free_ports, load, sgd_weights

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "cluster_task.py")
EMA = "ExponentialMovingAverage"
STEPS = {"hook": 400, "decorator": 400, "sync": 100, "embedding": 200, "lazy-hook": 300,
         "lazy-decorator": 300}


class Cluster(dict):
    """`{"<task><index>": its process}` of a running cluster; `kill` and `start`
    one task (started again with the same TF_CONFIG, address and log)."""

    def __init__(self, spec, model_dir, mode, tmp_path, env=None):
        super(Cluster, self).__init__()
        self._spec, self._args, self._tmp_path = spec, (model_dir, mode), tmp_path
        self._env = env or {}

    def start(self, name):
        task, index = name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")):])
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": self._spec, "task": {"type": task, "index": index}}), **self._env)
        log = open(str(self._tmp_path / (name + ".log")), "a")
        model_dir, mode = self._args
        self[name] = subprocess.Popen(
            [sys.executable, SCRIPT, str(model_dir), mode, str(STEPS[mode])],
            env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name):
        self[name].kill()
        self[name].wait()


@contextlib.contextmanager
def cluster(model_dir, mode, tmp_path, ps_tasks=1, workers=1, env=None):
    addresses = ["127.0.0.1:%d" % p for p in free_ports(ps_tasks + 1 + workers)]
    spec = {"ps": addresses[1 + workers:], "chief": [addresses[0]]}
    if workers:
        spec["worker"] = addresses[1:1 + workers]
    processes = Cluster(spec, model_dir, mode, tmp_path, env)
    try:
        for name in (["ps%d" % i for i in range(ps_tasks)] + ["chief0"]
                     + ["worker%d" % i for i in range(workers)]):
            processes.start(name)
        yield processes
    finally:
        for process in processes.values():
            process.kill()
            process.wait()


def _wait_for(predicate, processes, tmp_path, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        for task in [t for t in processes if not t.startswith("ps")]:
            code = processes[task].poll()
            if code not in (None, 0):
                log = (tmp_path / (task + ".log")).read_text()
                pytest.fail("%s exited with %s:\n%s" % (task, code, log[-3000:]))
        time.sleep(0.5)
    pytest.fail("the cluster did not finish in %d s" % timeout)


def _numpy_loss(model_dir, suffix):
    w, b = load(model_dir, "linear/w" + suffix), load(model_dir, "linear/b" + suffix)
    return np.mean((DATA[0] @ w + b - DATA[1]) ** 2)


def _report(model_dir, task):
    with open(os.path.join(str(model_dir), task + ".json")) as handle:
        return json.load(handle)


@pytest.mark.parametrize("mode", ["hook", "decorator"])
def test_parameter_server_training_feeds_one_average(tmp_path, mode):
    model_dir = tmp_path / "model"
    result = model_dir / "result.json"
    with cluster(model_dir, mode, tmp_path) as processes:
        _wait_for(lambda: result.exists() and os.path.exists(str(model_dir / "worker0.json")),
                  processes, tmp_path)
    chief, worker = _report(model_dir, "chief0"), _report(model_dir, "worker0")
    # Both tasks trained, and the averages live beside their variables on the ps.
    assert chief["steps"] > 0 and worker["steps"] > 0
    for name in ["linear/w", "linear/w/" + EMA, "linear/b/" + EMA]:
        assert chief["devices"][name] == worker["devices"][name] == "/job:ps/task:0"
    # Every step of every task updated the one average once: the zero-debias
    # counter equals the global step, which counts the steps of both tasks.
    global_step = load(model_dir, "global_step")
    assert global_step == chief["steps"] + worker["steps"]
    assert load(model_dir, "linear/w/%s/local_step" % EMA) == global_step
    averages = load(model_dir, "linear/w/" + EMA)
    assert np.all(np.isfinite(averages))
    np.testing.assert_allclose(averages, load(model_dir, "linear/w"), atol=0.2)
    # The chief's final evaluation used the averages.
    with open(str(result)) as handle:
        loss = json.load(handle)["loss"]
    np.testing.assert_allclose(loss, _numpy_loss(model_dir, "/" + EMA), rtol=1e-5)
    assert abs(loss - _numpy_loss(model_dir, "")) > 1e-7


def test_partitioned_embedding_on_two_parameter_servers(tmp_path):
    model_dir = tmp_path / "model"
    result = model_dir / "result.json"
    with cluster(model_dir, "embedding", tmp_path, ps_tasks=2) as processes:
        _wait_for(lambda: result.exists() and os.path.exists(str(model_dir / "worker0.json")),
                  processes, tmp_path)
    chief, worker = _report(model_dir, "chief0"), _report(model_dir, "worker0")
    assert chief["steps"] > 0 and worker["steps"] > 0
    # Each part of the table on its own parameter server, its average beside it.
    parts = ["emb/part_0", "emb/part_1"]
    assert {chief["devices"][p] for p in parts} == {"/job:ps/task:0", "/job:ps/task:1"}
    for part in parts:
        assert (chief["devices"][part] == chief["devices"][part + "/" + EMA]
                == worker["devices"][part + "/" + EMA])
    # Saved as TF saves the table: the whole of it under the full name.
    keys = dict(tf.train.list_variables(str(model_dir)))
    assert keys["emb"] == keys["emb/" + EMA] == [16, 1]
    # Every step of every task updated each part's average once.
    global_step = load(model_dir, "global_step")
    assert global_step == chief["steps"] + worker["steps"]
    for part in parts:
        assert load(model_dir, "%s/%s/local_step" % (part, EMA)) == global_step
    table = estimator_ema.read_averages(str(model_dir))["emb"]
    np.testing.assert_array_equal(table, load(model_dir, "emb/" + EMA))
    assert np.all(np.isfinite(table))
    np.testing.assert_allclose(table, load(model_dir, "emb"), atol=0.2)
    # The chief's final evaluation used the averages.
    ids = (np.abs(DATA[0][:, 0]) * 5).astype(np.int64) % 16

    def loss(suffix):
        predictions = (DATA[0] @ load(model_dir, "linear/w" + suffix)
                       + load(model_dir, "emb" + suffix)[ids])
        return np.mean((predictions - DATA[1]) ** 2)

    with open(str(result)) as handle:
        np.testing.assert_allclose(json.load(handle)["loss"], loss("/" + EMA), rtol=1e-4)
    assert abs(loss("/" + EMA) - loss("")) > 1e-7


def _saved(record, name):
    """`{global step: array}` of the arrays recorded as `<name>_<step>`."""
    return {int(key.rpartition("_")[2]): value for key, value in record.items()
            if key.rpartition("_")[0] == name}


def _lazy_run(tmp_path, how, workers, fault=None, sync=False, **options):
    """Trains the lazy-rows model on a cluster of two ps, a chief and `workers`
    workers, with the averaging `options` (decay 0.9); returns the chief's
    record (the table after every step of the chief's; ours, stock's and the
    table in every checkpoint) and its log. With `fault`, that task is killed
    once a checkpoint after step 100 is written, and started again. With
    `sync`, a SyncReplicasOptimizer over the chief and one worker trains."""
    model_dir = tmp_path / "model"
    record = model_dir / "record.npz"
    env = {"LAZY_OPTIONS": json.dumps(options), "LAZY_SYNC": "1" if sync else ""}
    with cluster(model_dir, "lazy-" + how, tmp_path, ps_tasks=2, workers=workers,
                 env=env) as processes:
        if fault:
            def written():
                path = tf.train.latest_checkpoint(str(model_dir))
                return path is not None and int(path.rpartition("-")[2]) >= 100
            _wait_for(written, processes, tmp_path)
            time.sleep(0.3)
            processes.kill(fault)
            processes.start(fault)
        _wait_for(record.exists, processes, tmp_path)
        time.sleep(0.5)
    with np.load(str(record)) as arrays:
        return dict(arrays), (tmp_path / "chief0.log").read_text()


def _exact_from_first_checkpoint(record, decay=0.9, num_updates=False, every_n_steps=1):
    """Checks every checkpoint the chief recorded against a numpy EMA of the
    weights after every step, from the averages in its first one; returns the
    checkpoints' steps."""
    weights, ours = _saved(record, "weights"), _saved(record, EMA)
    first, last = min(ours), max(ours)
    assert sorted(s for s in weights if s >= first) == list(range(first, last + 1))
    average = ours[first].astype(np.float64)
    for step in range(first + 1, last + 1):
        if step % every_n_steps == 0:
            d = min(decay, (1.0 + step) / (10.0 + step)) if num_updates else decay
            average += (weights[step] - average) * (1 - d ** every_n_steps)
        if step in ours:
            np.testing.assert_allclose(ours[step], average, rtol=1e-5, atol=1e-6,
                                       err_msg="checkpoint %d" % step)
    return sorted(ours)


@pytest.mark.parametrize("how, options", [
    ("hook", dict(num_updates=False)),
    ("decorator", dict(num_updates=False)),
    ("hook", dict(num_updates=True, every_n_steps=3)),
], ids=["hook", "decorator", "hook-num_updates-every_3"])
def test_one_training_task_averages_a_partitioned_table_lazily_and_exactly(tmp_path, how,
                                                                          options):
    record, log = _lazy_run(tmp_path, how, workers=0, **options)
    assert "['emb/part_0', 'emb/part_1'] written only in rows, averaged lazily" in log
    steps = _exact_from_first_checkpoint(record, **options)
    assert steps[0] == 0 and steps[-1] == STEPS["lazy-" + how] and len(steps) >= 10
    weights, stock = _saved(record, "weights"), _saved(record, "Stock")
    # The averages start from the weights training starts from.
    np.testing.assert_array_equal(_saved(record, EMA)[0], weights[0])
    if options["num_updates"]:
        return
    average = weights[0].astype(np.float64)
    for step in range(1, steps[-1] + 1):
        average += (weights[step] - average) * (1 - 0.9)
        if step in stock:
            np.testing.assert_allclose(stock[step], average, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_an_update_due_every_third_step_is_gated_exactly_on_the_parameter_servers(tmp_path,
                                                                                    how):
    # Dense averages of a table on both ps, the update gated in the graph (the
    # global step lives on a ps, so the hook does not count runs): the gate's
    # switch is on the task, the updates it gates on the ps.
    options = dict(num_updates=False, every_n_steps=3, lazy_rows=False)
    record, log = _lazy_run(tmp_path, how, workers=0, **options)
    assert "averaged densely: lazy_rows=False" in log
    steps = _exact_from_first_checkpoint(record, every_n_steps=3)
    assert steps[0] == 0 and steps[-1] == STEPS["lazy-" + how] and len(steps) >= 10


@pytest.mark.parametrize("fault", ["chief0", "ps1"])
def test_averages_go_on_exactly_from_the_last_checkpoint_when_a_task_is_killed(tmp_path,
                                                                               fault):
    # The chief started again restores the last checkpoint onto the live ps;
    # a ps started again is empty, and the chief's session, started again,
    # restores the last checkpoint onto it.
    record, log = _lazy_run(tmp_path, "hook", workers=0, fault=fault, num_updates=False)
    steps = _exact_from_first_checkpoint(record)
    assert steps[-1] == STEPS["lazy-hook"]
    assert steps[0] >= 100 if fault == "chief0" else steps[0] == 0
    assert load(tmp_path / "model", "global_step") == STEPS["lazy-hook"]


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_sync_replicas_optimizer_averages_a_table_lazily_once_per_global_step(tmp_path, how):
    # Ours is woven around the table's writes wherever they run (the chief's
    # queue runner). With no tokens before the first step, each of the chief's
    # runs ends once the aggregated update of its global step is applied and
    # before the next can start: the weights it records after each run are the
    # weights after every global step. (SyncReplicasOptimizer's own averaging,
    # "Stock", runs after the replicas' tokens are handed out, so a checkpoint
    # may catch it before or after its update: it is no oracle here.)
    record, log = _lazy_run(tmp_path, how, workers=1, sync=True, num_updates=False)
    assert "['emb/part_0', 'emb/part_1'] written only in rows, averaged lazily" in log
    steps = _exact_from_first_checkpoint(record)
    assert steps[0] == 0 and steps[-1] == STEPS["lazy-" + how] and len(steps) >= 10


def test_sync_replicas_optimizer_updates_the_average_once_per_global_step(tmp_path):
    model_dir = tmp_path / "model"
    final = model_dir / ("model.ckpt-%d.index" % STEPS["sync"])
    with cluster(model_dir, "sync", tmp_path) as processes:
        _wait_for(final.exists, processes, tmp_path)
        time.sleep(1)  # the checkpoint's other files and state
    assert load(model_dir, "global_step") == STEPS["sync"]
    # Two replicas aggregate each step; the average was updated once per step.
    assert load(model_dir, "average_updates/%s/local_step" % EMA) == STEPS["sync"]
    averages = load(model_dir, "linear/w/" + EMA)
    assert np.all(np.isfinite(averages))
    np.testing.assert_allclose(averages, load(model_dir, "linear/w"), atol=0.2)
    est = estimator_ema.averaged_estimator(estimator(model_dir))
    loss = est.evaluate(lambda: tf.data.Dataset.from_tensor_slices(DATA).batch(32))["loss"]
    np.testing.assert_allclose(loss, _numpy_loss(model_dir, "/" + EMA), rtol=1e-5)


MIRRORED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "mirrored.py")


def _mirrored(model_dir, replicas, mode):
    return subprocess.run([sys.executable, MIRRORED, str(model_dir), str(replicas), mode],
                          capture_output=True, text=True, timeout=180)


def test_decorator_under_a_one_device_mirrored_strategy(model_dir):
    result = _mirrored(model_dir, 1, "decorator")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = ema_oracle(sgd_weights(6), 0.8)
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), expected[0], atol=1e-5)
    np.testing.assert_allclose(load(model_dir, "linear/b/" + EMA), expected[1], atol=1e-5)


def test_average_tensors_under_a_one_device_mirrored_strategy(model_dir):
    result = _mirrored(model_dir, 1, "tensors")
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(os.path.join(str(model_dir), "tensors.npz")) as tensors:
        for name in ("linear/w", "linear/b"):
            np.testing.assert_array_equal(tensors[name.replace("/", "__")],
                                          load(model_dir, name + "/" + EMA))


def test_hook_refuses_a_mirrored_strategy(model_dir):
    result = _mirrored(model_dir, 1, "hook")
    assert result.returncode != 0
    assert re.search(r"RuntimeError: ExponentialMovingAverageHook cannot average variables "
                     r"that MirroredStrategy(V1)? mirrors", result.stderr), result.stderr[-3000:]


@pytest.mark.skipif(IS_TF1, reason="logical CPU devices are configured with the TF 2 API")
def test_decorator_fails_fast_on_several_mirrored_replicas(model_dir):
    started = time.time()
    result = _mirrored(model_dir, 2, "decorator")
    assert result.returncode != 0
    assert ("with_ema / with_swa support a tf.distribute strategy over one replica only "
            "(got MirroredStrategy over 2 replicas)") in result.stderr
    assert time.time() - started < 120


def _within_races_of_stock(record):
    """Checks each checkpoint's averages against stock's beside them (see
    below); returns the last checkpoint's step."""
    ours, stock, weights = (_saved(record, name) for name in (EMA, "Stock", "weights"))
    steps = sorted(weights)
    moves = [np.abs(weights[b] - weights[a]).max() for a, b in zip(steps, steps[1:])]
    assert len(ours) >= 10
    # Gaps in races: (1 - decay) times the largest change of a row between two
    # of the chief's steps.
    races = {step: np.abs(ours[step] - stock[step]).max() / ((1 - 0.9) * max(moves))
             for step in sorted(ours)}
    assert max(races.values()) <= 6, races
    assert np.median(list(races.values())) <= 1, races
    last = max(ours)
    assert np.abs(ours[last] - stock[last]).max() <= 3 * (1 - 0.9) * max(moves[-30:])
    return last


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_asynchronous_workers_average_lazily_as_stock_does(tmp_path, how):
    # Three tasks train at once, half their lookups on 4 hot rows, with stock
    # dense averaging beside ours in the same graph. Stock's updates race the
    # other tasks' writes as ours do, and a checkpoint taken while the tasks
    # train reads ours and stock's at different moments: each such race moves
    # an average by at most (1 - decay) times one write's change of a row.
    # Nothing is counted twice and nothing accumulates: checkpoints are within
    # one such race of stock at the median, each within six (a save slow
    # enough for the other tasks to write several times between its reads:
    # seen up to 3.6 on a loaded machine, and gone by the next checkpoint),
    # and the last one, written once every task has stopped, within three
    # races of the last steps' writes.
    record, log = _lazy_run(tmp_path, how, workers=2, num_updates=False)
    assert "['emb/part_0', 'emb/part_1'] written only in rows, averaged lazily" in log
    last = _within_races_of_stock(record)
    global_step = load(tmp_path / "model", "global_step")
    assert global_step == last
    reports = [_report(tmp_path / "model", task) for task in ("chief0", "worker0", "worker1")]
    assert all(r["steps"] > 20 for r in reports)
    assert global_step == sum(r["steps"] for r in reports)


def test_a_killed_worker_leaves_the_averages_within_the_races_of_stock(tmp_path):
    # A worker killed mid-step, and started again, while two tasks go on.
    record, _ = _lazy_run(tmp_path, "hook", workers=2, fault="worker0", num_updates=False)
    assert _within_races_of_stock(record) == load(tmp_path / "model", "global_step")
