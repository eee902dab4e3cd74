"""Real multi-process clusters on 127.0.0.1: parameter server, chief and worker,
each a process with its own TF_CONFIG, bounded in time and killed at the end."""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import IS_TF1, DATA, ema_oracle, estimator, load, sgd_weights

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "cluster_task.py")
EMA = "ExponentialMovingAverage"
STEPS = {"hook": 400, "decorator": 400, "sync": 100, "embedding": 200}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def cluster(model_dir, mode, tmp_path, ps_tasks=1):
    addresses = ["127.0.0.1:%d" % p for p in _free_ports(ps_tasks + 2)]
    spec = {"ps": addresses[2:], "chief": [addresses[0]], "worker": [addresses[1]]}
    processes = {}
    try:
        for task, index in [("ps", i) for i in range(ps_tasks)] + [("chief", 0), ("worker", 0)]:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                {"cluster": spec, "task": {"type": task, "index": index}}))
            log = open(str(tmp_path / ("%s%d.log" % (task, index))), "w")
            processes[task if task != "ps" else "ps%d" % index] = subprocess.Popen(
                [sys.executable, SCRIPT, str(model_dir), mode, str(STEPS[mode])],
                env=env, stdout=log, stderr=subprocess.STDOUT)
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
        for task in ("chief", "worker"):
            code = processes[task].poll()
            if code not in (None, 0):
                log = (tmp_path / (task + "0.log")).read_text()
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
