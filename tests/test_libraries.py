"""Estimators that libraries build: deepctr's DeepFM, WDL, DCN and xDeepFM
(TensorFlow 2.15 and 1.15), tensorflow-ranking's DNN ranking Estimator (2.15)
and bert-tensorflow's run_classifier model_fn through TPUEstimator (1.15).

Each library's models train with `with_ema` and with the hook; a Recorder
(test_canned) keeps the averaged variables after every step, and every
checkpoint's averages must equal a float64 numpy EMA of them. A stock
checkpoint whose variables hold the numpy-oracle averages, read by the
undecorated library Estimator, must predict, evaluate and export what ours
does on the averaged model. A library that does not install is skipped.
"""

import os
import threading
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import EMA, IS_TF1, ema_oracle, load, run_config, save_checkpoint, tf1
from test_canned import Recorder

DECAY = 0.8
RNG = np.random.RandomState(0)
ROWS = 16
BATCH = 4


def decorate(estimator_or_model_fn):
    return estimator_ema.with_ema(estimator_or_model_fn, decay=DECAY)


def dataset(features, labels=None, params=None, repeat=False):
    """The rows in order, batched by TPUEstimator's params['batch_size'] if any."""
    batch = (params or {}).get("batch_size", BATCH)
    data = tf.data.Dataset.from_tensor_slices(features if labels is None else (features, labels))
    data = data.batch(batch, drop_remainder=repeat)
    return data.repeat() if repeat else data


def checkpoint_steps(model_dir):
    state = tf.train.get_checkpoint_state(str(model_dir))
    return {int(path.rsplit("-", 1)[1]): path for path in state.all_model_checkpoint_paths}


def train(est, model_dir, input_fn, runs, hooks=()):
    """Trains `steps` steps per run; the averaged variables' names and the
    weights before the first step and after every global step."""
    trajectory = []
    for steps in runs:
        recorder = Recorder()
        est.train(input_fn, steps=steps, hooks=list(hooks) + [recorder])
        if trajectory:  # a run starts from the weights the last one saved
            for before, restored in zip(trajectory[-1], recorder.trajectory[0]):
                np.testing.assert_array_equal(before, restored)
        trajectory += recorder.trajectory[1 if trajectory else 0:]
    return recorder.names, trajectory


def assert_every_checkpoint_holds_the_oracle_averages(model_dir, names, trajectory):
    steps = checkpoint_steps(model_dir)
    assert len(steps) >= 3 and max(steps) == len(trajectory) - 1, sorted(steps)
    for step, path in sorted(steps.items()):
        expected = ema_oracle(trajectory[:step + 1], DECAY)
        for name, weights, average in zip(names, trajectory[step], expected):
            np.testing.assert_allclose(load(path, name), weights, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(load(path, name + "/" + EMA), average, rtol=1e-5,
                                       atol=1e-6, err_msg="%s at step %d" % (name, step))


def write_stock_checkpoint(model_dir, names, trajectory, stock_dir):
    """The last checkpoint with each averaged variable holding its numpy-oracle
    average and no shadow copies, saved by a plain Saver."""
    last = tf.train.latest_checkpoint(str(model_dir))
    averages = dict(zip(names, ema_oracle(trajectory, DECAY)))
    values = {}
    for name, _ in tf.train.list_variables(last):
        if not name.endswith("/" + EMA):
            value = load(last, name)
            values[name] = averages[name].astype(value.dtype) if name in averages else value
    os.makedirs(str(stock_dir))
    prefix = save_checkpoint(os.path.join(str(stock_dir), "model.ckpt"), values,
                             int(values["global_step"]))
    assert sorted(n for n, _ in tf.train.list_variables(prefix)) == sorted(values)


def predictions(est, input_fn):
    """{key: every batch's predictions}; a bare tensor of predictions is key ''."""
    out = {}
    for batch in est.predict(input_fn, yield_single_examples=False):
        for key, value in (batch.items() if isinstance(batch, dict) else [("", batch)]):
            out.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in out.items()}


def serve(export_dir, feed):
    """Every output of the SavedModel's default signature (tensorflow-ranking's
    only one is 'predict') on `feed` ({input: array})."""
    with tf1.Session(graph=tf.Graph()) as session:
        signatures = tf1.saved_model.loader.load(session, ["serve"], export_dir.decode())
        signatures = signatures.signature_def
        signature = signatures["serving_default" if "serving_default" in signatures
                               else "predict"]
        fetches = {key: info.name for key, info in signature.outputs.items()}
        return session.run(fetches, {signature.inputs[key].name: value
                                     for key, value in feed.items()})


def assert_same(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


def check_library(tmp_path, make, inputs, runs, averaging):
    """`make(model_dir, decorator=None)` builds the library's Estimator (through
    `decorator` if given); `inputs` holds its train, eval and predict input_fns,
    its serving_input_fn and a serving feed. Returns the averaged variables' names."""
    model_dir = tmp_path / "model"
    if averaging == "with_ema":
        est = make(model_dir, decorate)
        names, trajectory = train(est, model_dir, inputs["train"], runs)
        averaged, export = est, est.export_saved_model
    else:
        est = make(model_dir)
        names, trajectory = train(est, model_dir, inputs["train"], runs,
                                  [estimator_ema.ExponentialMovingAverageHook(DECAY)])
        averaged = estimator_ema.averaged_estimator(est)

        def export(export_dir_base, serving_input_fn):
            return estimator_ema.export_saved_model(est, export_dir_base, serving_input_fn)
    assert len(names) >= 3
    assert_every_checkpoint_holds_the_oracle_averages(model_dir, names, trajectory)

    stock_dir = tmp_path / "stock"
    write_stock_checkpoint(model_dir, names, trajectory, stock_dir)
    stock = make(stock_dir)
    ours = predictions(averaged, inputs["predict"])
    assert_same(ours, predictions(stock, inputs["predict"]))
    assert_same(averaged.evaluate(inputs["eval"], steps=1),
                stock.evaluate(inputs["eval"], steps=1))
    # The raw weights predict otherwise: the comparison can tell them apart.
    raw = predictions(make(model_dir), inputs["predict"])
    assert max(np.abs(ours[key] - raw[key]).max() for key in raw
               if ours[key].dtype.kind == "f") > 1e-5

    ours = export(str(tmp_path / "export"), inputs["serving"])
    theirs = stock.export_saved_model(str(tmp_path / "stock_export"), inputs["serving"])
    for name, _ in tf.train.list_variables(theirs.decode() + "/variables/variables"):
        np.testing.assert_allclose(load(ours.decode() + "/variables/variables", name),
                                   load(theirs.decode() + "/variables/variables", name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    assert_same(serve(ours, inputs["feed"]), serve(theirs, inputs["feed"]))
    return names


def raw_serving_input_fn(features):
    """Placeholders shaped like `features` (any batch size) as the serving input."""
    return tf.estimator.export.build_raw_serving_input_receiver_fn(
        {key: tf.constant(value[:1]) for key, value in features.items()})


def inputs_of(features, labels):
    return {"train": lambda params=None: dataset(features, labels, params, repeat=True),
            "eval": lambda params=None: dataset(features, labels, params),
            "predict": lambda params=None: dataset(features, params=params),
            "serving": raw_serving_input_fn(features),
            "feed": features}


# deepctr ----------------------------------------------------------------------

def import_deepctr():
    """deepctr's import starts a thread that asks the package registry for a
    newer release: offline, it fails at once and the thread is joined."""
    requests = pytest.importorskip("requests")
    before = set(threading.enumerate())
    with mock.patch.object(requests, "get", side_effect=requests.ConnectionError("offline")):
        deepctr_estimator = pytest.importorskip("deepctr.estimator")
        for thread in set(threading.enumerate()) - before:
            thread.join()
    return deepctr_estimator


CTR_FEATURES = {"c1": RNG.randint(0, 4, ROWS).astype(np.int64),
                "c2": RNG.randint(0, 5, ROWS).astype(np.int64),
                "x": RNG.randn(ROWS, 1).astype(np.float32)}
CTR_LABELS = ((CTR_FEATURES["x"][:, 0] + (CTR_FEATURES["c1"] == 2)) > 0.5).astype(
    np.float32)[:, None]
# The Estimator of each model, and its options beside the tiny DNN.
CTR_MODELS = {"DeepFM": ("DeepFMEstimator", {}), "WDL": ("WDLEstimator", {}),
              "DCN": ("DCNEstimator", {"cross_num": 1}),
              "xDeepFM": ("xDeepFMEstimator", {"cin_layer_size": (2,)})}


def ctr_estimator(kind):
    deepctr_estimator = import_deepctr()
    fc = tf.feature_column
    categorical = [fc.categorical_column_with_identity("c1", 4),
                   fc.categorical_column_with_identity("c2", 5)]
    numeric = fc.numeric_column("x")
    linear = categorical + [numeric]
    dnn = [fc.embedding_column(column, 2) for column in categorical] + [numeric]

    def make(model_dir, decorator=None):
        name, options = CTR_MODELS[kind]
        est = getattr(deepctr_estimator, name)(
            linear, dnn, dnn_hidden_units=(4,), model_dir=str(model_dir),
            config=run_config(save_checkpoints_steps=2), **options)
        return decorator(est) if decorator else est
    return make


@pytest.mark.parametrize("kind", sorted(CTR_MODELS))
def test_with_ema_of_a_deepctr_estimator(tmp_path, kind):
    check_library(tmp_path, ctr_estimator(kind), inputs_of(CTR_FEATURES, CTR_LABELS), [6],
                  "with_ema")


def test_the_hook_on_a_deepctr_estimator(tmp_path):
    check_library(tmp_path, ctr_estimator("DeepFM"), inputs_of(CTR_FEATURES, CTR_LABELS), [6],
                  "hook")


# tensorflow-ranking -------------------------------------------------------------

LIST_SIZE = 3
RANKING_FEATURES = {"query": RNG.randn(ROWS, 1).astype(np.float32),
                    "doc": RNG.randn(ROWS, LIST_SIZE, 2).astype(np.float32),
                    "term": RNG.randint(0, 5, (ROWS, LIST_SIZE, 1)).astype(np.int64)}
RANKING_LABELS = (RANKING_FEATURES["doc"][..., 0] > 0).astype(np.float32)


def ranking_estimator(model_dir, decorator=None):
    """tensorflow-ranking's own RunConfig saves at the end of each train call.
    Its feature columns are trainable in TRAIN only (`trainable=(mode == TRAIN)`):
    the term embedding is averaged in TRAIN and restored from its average in
    PREDICT, EVAL and export. Its rank metrics break ties between scores at
    random, and ReLU units all dead on some documents tie them: tanh keeps the
    scores apart, so the metrics of two runs can be compared."""
    tfr = pytest.importorskip("tensorflow_ranking")
    fc = tf.feature_column
    term = fc.embedding_column(fc.categorical_column_with_identity("term", 5), 2)
    est = tfr.estimator.make_dnn_ranking_estimator(
        example_feature_columns={"doc": fc.numeric_column("doc", shape=(2,)), "term": term},
        context_feature_columns={"query": fc.numeric_column("query")},
        hidden_units=[4], activation_fn=tf.nn.tanh, optimizer=tf1.train.AdagradOptimizer(0.1),
        loss="softmax_loss",
        listwise_inference=True, model_dir=str(model_dir))
    return decorator(est) if decorator else est


@pytest.mark.skipif(IS_TF1, reason="tensorflow-ranking 0.5 needs TensorFlow 2")
@pytest.mark.parametrize("averaging", ["with_ema", "hook"])
def test_a_tensorflow_ranking_dnn_estimator(tmp_path, averaging):
    names = check_library(tmp_path, ranking_estimator,
                          inputs_of(RANKING_FEATURES, RANKING_LABELS), [2, 2, 2], averaging)
    assert [name for name in names if "term_embedding" in name]


# bert-tensorflow ----------------------------------------------------------------

SEQUENCE = 6
BERT_LABELS = RNG.randint(0, 2, ROWS).astype(np.int32)
BERT_FEATURES = {"input_ids": RNG.randint(0, 20, (ROWS, SEQUENCE)).astype(np.int32),
                 "input_mask": np.ones((ROWS, SEQUENCE), np.int32),
                 "segment_ids": np.zeros((ROWS, SEQUENCE), np.int32),
                 "label_ids": BERT_LABELS,
                 "is_real_example": np.ones(ROWS, np.int32)}


def bert_estimator(model_dir, decorator=None):
    """run_classifier's model_fn on a 2-layer BERT (hidden size 32) from scratch
    (no init_checkpoint, no vocabulary), through TPUEstimator on the CPU."""
    modeling = pytest.importorskip("bert.modeling")
    run_classifier = pytest.importorskip("bert.run_classifier")
    config = modeling.BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32,
                                 max_position_embeddings=16)
    model_fn = run_classifier.model_fn_builder(
        config, num_labels=2, init_checkpoint=None, learning_rate=0.01, num_train_steps=6,
        num_warmup_steps=1, use_tpu=False, use_one_hot_embeddings=False)
    tpu = tf1.estimator.tpu
    return tpu.TPUEstimator(
        model_fn=decorator(model_fn) if decorator else model_fn, use_tpu=False,
        config=tpu.RunConfig(model_dir=str(model_dir), tf_random_seed=0,
                             save_checkpoints_steps=2, save_summary_steps=1000,
                             log_step_count_steps=1000),
        train_batch_size=BATCH, eval_batch_size=BATCH, predict_batch_size=BATCH,
        export_to_tpu=False)


@pytest.mark.skipif(not IS_TF1, reason="bert-tensorflow needs TensorFlow 1")
@pytest.mark.parametrize("averaging", ["with_ema", "hook"])
def test_bert_run_classifier_through_tpu_estimator(tmp_path, averaging):
    names = check_library(tmp_path, bert_estimator, inputs_of(BERT_FEATURES, BERT_LABELS), [6],
                          averaging)
    assert "bert/embeddings/word_embeddings" in names
