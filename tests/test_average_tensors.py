"""Reading the averages in the training session: `average_tensors`."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import run_config, tf1
from test_lazy_rows import embedding_model_fn, ids_input_fn, lazy_tables, whole
from test_ordering import Recorder, ema_of


class AverageLogger(tf1.train.SessionRunHook):
    """Fetches `average_tensors()` after every step."""

    def begin(self):
        self.tensors = estimator_ema.average_tensors()
        self.step = tf1.train.get_global_step()
        self.read = []  # [(global step, {name: value})]

    def after_run(self, run_context, run_values):
        step, values = run_context.session.run([self.step, self.tensors])
        self.read.append((int(step), values))


@pytest.mark.parametrize("parts", [0, 2])
@pytest.mark.parametrize("how", ["decorator", "hook"])
def test_the_averages_read_in_session_are_exact_every_step(tmp_path, caplog, how, parts):
    caplog.set_level(logging.INFO, logger="estimator_ema")
    model_fn, hooks = embedding_model_fn, []
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=0.8)
    else:
        hooks.append(estimator_ema.ExponentialMovingAverageHook(decay=0.8))
    est = tf.estimator.Estimator(model_fn, str(tmp_path), params=dict(optimizer="sgd", parts=parts),
                                 config=run_config(save_checkpoints_steps=100))
    recorder, reader = Recorder(), AverageLogger()
    est.train(ids_input_fn, steps=9, hooks=hooks + [reader, recorder])
    assert lazy_tables(caplog)
    record = [(step, whole(values)) for step, values in recorder.record]
    (_, start), after = record[0], record[1:]
    assert len(reader.read) == 9
    for step, values in reader.read:
        values = whole(values)
        assert sorted(values) == ["embedding/table", "head/w"]
        expected = ema_of([r for r in after if r[0] <= step], 0.8, start)
        for name, value in values.items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6,
                                       err_msg="%s after step %d" % (name, step))


def test_a_graph_without_those_averages_is_refused():
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match=(
                r"^The default graph has no averages named 'ExponentialMovingAverage' "
                r"\(it has: none\); call average_tensors in a hook's begin\(\) once the "
                r"averaging is built")):
            estimator_ema.average_tensors()
        tf1.get_variable("w", [2])
        tf1.train.get_or_create_global_step()
        hook = estimator_ema.ExponentialMovingAverageHook(decay=0.5)
        hook.begin()
        assert sorted(estimator_ema.average_tensors()) == ["w"]
        with pytest.raises(ValueError, match=r"named 'SWA' \(it has: 'ExponentialMovingAverage'\)"):
            estimator_ema.average_tensors(name="SWA")
