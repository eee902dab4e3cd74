"""The graph walk that lets the hook count global steps in Python."""

import pytest

from conftest import IS_TF1, tf1

from estimator_ema._graphs import adds_one, ancestors, training_ops


def build(use_resource, train):
    """Whether the ops `train` builds add one to a global step, a resource
    variable or (TF 1 only) a reference variable."""
    graph = tf1.Graph()
    with graph.as_default():
        step = tf1.get_variable(
            "global_step", [], tf1.int64, tf1.zeros_initializer(), trainable=False,
            use_resource=use_resource,
            collections=[tf1.GraphKeys.GLOBAL_VARIABLES, tf1.GraphKeys.GLOBAL_STEP])
        w = tf1.get_variable("w", [2], use_resource=use_resource)
        loss = tf1.reduce_sum(tf1.square(w))
        op = train(step, loss)
    return adds_one(ancestors(op), step)


def minimize(step, loss):
    return tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)


def minimize_twice(step, loss):
    return tf1.group(minimize(step, loss), minimize(step, loss))


def add_two(step, loss):
    with tf1.control_dependencies([minimize(None, loss)]):
        return tf1.assign_add(step, 2)


def assign(step, loss):
    with tf1.control_dependencies([minimize(None, loss)]):
        return tf1.assign(step, step + 1)


def add_one_in_cond(step, loss):
    return tf1.cond(loss > 0, lambda: tf1.assign_add(step, 1), lambda: tf1.identity(step))


def no_step(step, loss):
    return minimize(None, loss)


USE_RESOURCE = [False, True] if IS_TF1 else [True]


@pytest.mark.parametrize("use_resource", USE_RESOURCE)
def test_minimize_with_global_step_adds_one(use_resource):
    assert build(use_resource, minimize)


@pytest.mark.parametrize("use_resource", USE_RESOURCE)
@pytest.mark.parametrize("train", [minimize_twice, add_two, assign, add_one_in_cond, no_step])
def test_anything_else_is_not_counted(use_resource, train):
    assert not build(use_resource, train)


@pytest.mark.parametrize("use_resource", USE_RESOURCE)
def test_a_savers_save_op_is_not_a_train_op(use_resource):
    # A Saver built beside the model reads the variables (on TF 1.15 its save
    # op takes reference variables themselves): it neither writes them nor is
    # a candidate for the train op.
    graph = tf1.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        w = tf1.get_variable("w", [2], use_resource=use_resource)
        train_op = minimize(step, tf1.reduce_sum(tf1.square(w)))
        tf1.train.Saver()
        assert training_ops(step, [w]) == [train_op]
