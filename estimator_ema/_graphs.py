"""Graph walks shared by the hooks and the decorator."""

from estimator_ema._compat import tf


def ancestors(fetches):
    """Every op that running `fetches` runs (through data and control inputs)."""
    stack = []
    for fetch in tf.nest.flatten(fetches):
        op = getattr(fetch, "op", fetch)
        if isinstance(op, tf.Operation):
            stack.append(op)
    seen = set()
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


_RESOURCE_READS = frozenset(["ReadVariableOp", "VarIsInitializedOp"])


def adds_one(ran, variable):
    """Whether running the ops `ran` adds exactly one to `variable`.

    True when one op among them writes the variable, an `AssignAdd` of the
    constant 1 outside any control-flow construct (what
    `Optimizer.minimize(global_step=...)` builds), and the others at most read
    it. False whenever that cannot be told from the graph.
    """
    writers = [op for op in variable.op.outputs[0].consumers()
               if op in ran and not _reads(op)]
    return len(writers) == 1 and adds_one_to(writers[0], variable)


def adds_one_to(op, variable):
    """Whether `op` is an `AssignAdd` of the constant 1 to `variable`, outside
    any control-flow construct."""
    return (op.type in ("AssignAdd", "AssignAddVariableOp")
            and op.inputs[0] is variable.op.outputs[0]
            and op._get_control_flow_context() is None
            and tf.get_static_value(op.inputs[1]) == 1)


def _reads(op):
    """Whether `op`, a consumer of a variable's ref or handle, only reads it."""
    if op.type == "Identity":  # a reference variable's read (a handle's would be passed on)
        source = op.inputs[0].dtype
        return source != source.base_dtype
    return op.type in _RESOURCE_READS
