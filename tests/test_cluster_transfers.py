"""What a training step sends between the tasks of a parameter-server cluster,
read from the partition graphs TensorFlow runs (after Grappler's rewrites):
servers in this process (two ps and a worker), one step of each variant."""

import collections
import re

import pytest
import tensorflow as tf

import estimator_ema
from conftest import EMA, free_ports, recording_fetches, tf1

ROWS, DIM = 1000, 4


@pytest.fixture(scope="module")
def servers():
    """(the cluster's spec, its servers: ps 0, ps 1, worker 0), in this process
    (a server cannot be stopped: they end with it)."""
    addresses = ["127.0.0.1:%d" % port for port in free_ports(3)]
    spec = tf1.train.ClusterSpec({"ps": addresses[:2], "worker": addresses[2:]})
    config = tf1.ConfigProto(inter_op_parallelism_threads=2, intra_op_parallelism_threads=1)
    return spec, [tf1.train.Server(spec, job, index, config=config)
                  for job, index in (("ps", 0), ("ps", 1), ("worker", 0))]


def model_fn(features, labels, mode):
    """A table in two parts (one on each ps), a dense head, Adagrad."""
    table = tf1.get_variable("table", [ROWS, DIM], partitioner=tf1.fixed_size_partitioner(2))
    head = tf1.get_variable("head", [DIM, 1])
    pooled = tf.reduce_mean(tf1.nn.embedding_lookup(table, features), axis=1)
    loss = tf.reduce_mean(tf.square(tf.matmul(pooled, head) - labels))
    step = tf1.train.get_or_create_global_step()
    train_op = tf1.train.AdagradOptimizer(0.1).minimize(loss, global_step=step)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def received(servers, how, **options):
    """({ps device: Counter of what it receives from other tasks in a training
    step, as (the sending op's name, dtype)}, the global step's device, what
    the hook asked each run to fetch)."""
    spec, kept = servers
    graph = tf.Graph()
    with graph.as_default(), graph.container(how), tf1.device(
            tf1.train.replica_device_setter(cluster=spec, worker_device="/job:worker/task:0")):
        ids = tf.random.uniform([64, 4], 0, ROWS, dtype=tf.int64)
        labels = tf.random.normal([64, 1])
        decorated = estimator_ema.with_ema(model_fn, **options) if how == "decorator" else model_fn
        estimator_spec = decorated(ids, labels, tf.estimator.ModeKeys.TRAIN)
        hooks = list(estimator_spec.training_hooks)
        recording = None
        if how == "hook":
            recording = recording_fetches(estimator_ema.ExponentialMovingAverageHook(**options))
            hooks.append(recording)
        # As Estimator.train does, before the hooks begin.
        graph.add_to_collection(tf1.GraphKeys.SAVERS,
                                tf1.train.Saver(sharded=True, defer_build=True))
        metadata = tf1.RunMetadata()
        with tf1.train.MonitoredTrainingSession(
                master=kept[2].target, is_chief=True, scaffold=estimator_spec.scaffold,
                hooks=hooks, save_checkpoint_secs=None, save_summaries_steps=None,
                save_summaries_secs=None, log_step_count_steps=None) as session:
            session.run(estimator_spec.train_op, run_metadata=metadata,
                        options=tf1.RunOptions(output_partition_graphs=True))
        step_device = tf1.train.get_global_step().device
    receipts = collections.defaultdict(collections.Counter)
    for partition in metadata.partition_graphs:
        for node in partition.node:
            if node.op == "_Recv" and "/job:ps/" in node.device:
                sent = re.sub(r"^edge_\d+_", "", node.attr["tensor_name"].s.decode())
                dtype = tf.as_dtype(node.attr["tensor_type"].type)
                receipts[_task(node.device)][sent, dtype.name] += 1
    return receipts, _task(step_device), recording and recording.fetched


def _task(device):
    return re.search(r"/job:ps/(?:replica:\d+/)?task:\d+", device).group(0).replace(
        "replica:0/", "")


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_ps_receives_one_scalar_from_the_averaging_and_nothing_else(servers, how):
    """Beside what the training step itself sends, each ps that holds averages
    but not the global step receives the logarithm of the decay in effect,
    one float64 scalar (Grappler once split it in two: a negation and the
    logarithm itself); the global step's ps receives nothing more. With lazy
    rows the dense head's update follows the head's own writes on its ps:
    the hook and the decorator weave it into the optimizer's group of that
    ps's applies, so no join of the step crosses, and the hook fetches
    nothing."""
    stock, step_device, _ = received(servers, "none")
    averaged, _, fetched = received(servers, how, decay=0.9)
    if how == "hook":
        assert fetched == [False]
    assert sorted(averaged) == sorted(stock)
    for device in stock:
        more = sorted((averaged[device] - stock[device]).elements())
        assert more == ([] if device == step_device else [(EMA + "_rows/Log", "float64")])
