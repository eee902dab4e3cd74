"""An update that runs only on the steps it is due: the other steps run its gate, a few nodes."""

from estimator_ema._compat import tf


def gated(due, build, variables=()):
    """The op `build()` makes, run only where the bool scalar `due` is true,
    within an op that completes either way.

    One `Switch` of `due` gates it: every op `build` makes waits for an
    identity of the switch's true output (a control edge from the switch
    itself is never dead), so where `due` is false none of them runs (an op
    with a dead input is skipped, in TF 1 and TF 2 graphs alike, reference
    variables' assignments included), and a `Merge` ends it live. (`tf.cond`
    would switch every tensor its branch reads from outside: an op per
    weight and per average, run on every step.) Those ops reach `variables`
    (the averages, which nothing else a training step runs reads) through
    copies of their variable nodes built behind the gate, so that no node
    per variable runs where `due` is false either.
    """
    skipped, taken = tf.raw_ops.Switch(data=due, pred=due)
    pivot = tf.identity(taken)
    start = len(pivot.graph.get_operations())
    with tf.control_dependencies([pivot]):
        op = build()
        _read_behind_the_gate(pivot.graph.get_operations()[start:], variables)
    with tf.control_dependencies([op]):
        done = tf.identity(pivot)
    return tf.raw_ops.Merge(inputs=[skipped, done])[0].op


def _read_behind_the_gate(built, variables):
    """Rewires the ops `built` to read each of `variables` through a copy of its
    variable node (`VarHandleOp` or `VariableV2`: the same container, shared
    name and device, so the same variable) made in the current control
    context. A variable whose node is neither, or a resource variable with no
    shared name (its name at run time is the empty one), is read as it is."""
    nodes = {v.op for v in variables if isinstance(v.op, tf.Operation)
             and (v.op.type == "VariableV2"
                  or (v.op.type == "VarHandleOp" and v.op.get_attr("shared_name")))}
    copies = {}
    for op in built:
        for index, tensor in enumerate(op.inputs):
            node = tensor.op
            if node not in nodes:
                continue
            if node not in copies:
                copies[node] = _variable_node_copy(node)
            op._update_input(index, copies[node])


def _variable_node_copy(node):
    """A new node of `node`'s variable, beside it. A reference variable with no
    shared name (named at run time by its node) is given its node's name as
    its shared name, so that the two stay one variable when the graph is
    imported under a prefix."""
    if not node.get_attr("shared_name"):
        node._set_attr("shared_name", tf.AttrValue(s=node.name.encode()))
    attrs = {name: node.get_attr(name) for name in ("dtype", "shape", "container",
                                                     "shared_name")}
    graph = node.graph
    # Neither a container scope nor a colocation of the caller's may move it.
    with graph.container(""), graph.colocate_with(node, ignore_existing=True):
        if node.type == "VarHandleOp":
            return tf.raw_ops.VarHandleOp(**attrs)
        return tf.raw_ops.VariableV2(**attrs)
