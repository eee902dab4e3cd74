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


_RESOURCE_READS = frozenset(["ReadVariableOp", "VarIsInitializedOp", "ResourceGather",
                             "ResourceGatherNd", "VariableShape"])
# A Saver's save op takes a reference variable itself (TF 1.15), and only reads it.
SAVES = frozenset(["SaveV2", "Save", "SaveSlices"])

# The graph collection of the name scopes of Savers that the package built for
# its own use or replaced (see `saved_keys`).
SET_ASIDE_SAVERS = "estimator_ema_set_aside_savers"


def set_aside(saver, graph):
    """Records that `saver` (built) saves nothing the user relies on."""
    if saver.saver_def is not None:  # (None: a Saver of nothing)
        graph.add_to_collection(SET_ASIDE_SAVERS, _scope(saver.saver_def.save_tensor_name))


def saved_keys(graph):
    """`{name scope of a Saver: the checkpoint keys its save ops save}` for every
    Saver built in `graph` but those `set_aside`."""
    aside = set(graph.get_collection(SET_ASIDE_SAVERS))
    found = {}
    for op in graph.get_operations():
        if op.type in SAVES and _scope(op.name) not in aside:
            names = tf.get_static_value(op.inputs[1])
            keys = found.setdefault(_scope(op.name), set())
            if names is not None:
                keys.update(n.decode() if isinstance(n, bytes) else n for n in names.flat)
    return found


def _scope(name):
    return name.rpartition("/")[0]


# Ops that run a function: TF 2's `tf.cond` and `tf.while_loop`, a function call.
_FUNCTION_CALLS = frozenset(["If", "StatelessIf", "Case", "StatelessCase", "While",
                             "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall"])


def completions(ops):
    """What an op built now must wait for to follow `ops` and everything they
    run: `ops`, and an identity of each output of every op among them or their
    ancestors that runs a function.

    In a TF1-style graph the writes in a TF 2 `tf.cond` branch are not among its
    function's control outputs, so a control edge from the `If` op does not
    wait for them; the `If` op's outputs wait for what the branch returns.
    """
    ops = [as_op(item) for item in tf.nest.flatten(ops)]
    context = ops[0].graph._get_control_flow_context() if ops else None
    calls = sorted((op for op in ancestors(ops)
                    if op.type in _FUNCTION_CALLS and op.outputs
                    and op._get_control_flow_context() is context), key=lambda op: op.name)
    return ops + [tf.identity(t).op for op in calls for t in op.outputs]


def adds_one(ran, variable):
    """Whether running the ops `ran` adds exactly one to `variable`.

    True when one op among them writes the variable, an `AssignAdd` of the
    constant 1 outside any control-flow construct (what
    `Optimizer.minimize(global_step=...)` builds), and the others at most read
    it (averagers' ops aside). False whenever that cannot be told from the graph.
    """
    writers = [op for op in variable.op.outputs[0].consumers()
               if op in ran and not _reads(op) and not is_averaging_op(op)]
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
    return op.type in _RESOURCE_READS or op.type in SAVES


# Ops that pass a variable's ref or handle on (to a cond branch, a loop, a copy).
_PASS_THROUGH = frozenset(["Identity", "Switch", "RefSwitch", "Enter", "RefEnter", "Merge",
                           "RefMerge", "Exit", "RefExit", "NextIteration", "RefNextIteration"])
_RESTORES = frozenset(["RestoreV2", "Restore", "RestoreSlice"])

AVERAGING_SCOPES = "estimator_ema_averaging_scopes"
"""Graph collection of the name scopes (ending in '/') of the ops averagers build:
their reads and writes are not the training step's."""


def _carries_variable(tensor):
    dtype = tensor.dtype
    return dtype == tf.resource or dtype != dtype.base_dtype


def writers(variables, within=None):
    """Every op that may write one of `variables`, among the ops `within` (a set;
    None for the whole graph): each consumer of a variable's ref or handle that
    does more than read it, followed through identities and control-flow
    plumbing. An op that calls a function with the handle (`If`, `While`,
    `PartitionedCall`) counts as a writer. Ops that averagers built are left out.
    """
    found = set()
    for var in variables:
        stack, seen = [var.op.outputs[0]], set()
        while stack:
            for op in stack.pop().consumers():
                if op in seen or (within is not None and op not in within):
                    continue
                seen.add(op)
                if _reads(op):
                    continue
                if op.type in _PASS_THROUGH and _carries_variable(op.outputs[0]):
                    stack.extend(op.outputs)
                else:
                    found.add(op)
    return {op for op in found if not is_averaging_op(op)}


def is_averaging_op(op):
    """Whether an averager built `op` (see `AVERAGING_SCOPES`)."""
    return op.name.startswith(tuple(op.graph.get_collection(AVERAGING_SCOPES)))


def _consumers(op):
    ops = [c for t in op.outputs for c in t.consumers()]
    return ops + list(op._control_outputs)


def _is_restore_or_initializer(op, initializers):
    """Whether `op` is one of `initializers` (a set) or writes a variable with a
    checkpoint's value."""
    if op in initializers:
        return True
    if op.type not in ("Assign", "AssignVariableOp"):
        return False
    source = op.inputs[1].op
    while source.type == "Identity":
        source = source.inputs[0].op
    return source.type in _RESTORES


def training_ops(global_step, variables):
    """The ops a training step may fetch as its train op.

    Candidates are the ops, outside control flow, that are or follow a write
    of the global step and a write of one of `variables` (initializers and
    checkpoint restores aside) and either group other ops (NoOp), or may write
    the global step or one of `variables` (TF 2's `If` op among them), or end
    a TF 1 `tf.cond` one of whose branches may (its `Merge` ops). Of those,
    the ones no other candidate follows.
    """
    def seeds(some):
        initializers = {v.initializer for v in some}
        return [op for op in writers(some) if not _is_restore_or_initializer(op, initializers)]

    written = writers(list(variables) + [global_step])
    following = _following(seeds([global_step])) & _following(seeds(list(variables)))
    branches = _branches_of(written)
    candidates = {op for op in following
                  if op._get_control_flow_context() is None
                  and (op.type == "NoOp" or op in written or _ends_a_branch(op, branches))}
    last = [op for op in candidates if not (_following([op]) - {op}) & candidates]
    return sorted(last, key=lambda op: op.name)


def _branches_of(ops):
    """The control-flow contexts (TF 1 `tf.cond` branches, loop bodies) that
    hold one of `ops`, directly or around the context that does."""
    found = set()
    for op in ops:
        context = op._get_control_flow_context()
        while context is not None and context not in found:
            found.add(context)
            context = context.outer_context
    return found


def _ends_a_branch(op, branches):
    """Whether `op` is a TF 1 `tf.cond`'s `Merge` of an output of one of `branches`."""
    return op.type in ("Merge", "RefMerge") and any(
        t.op._get_control_flow_context() in branches for t in op.inputs)


def _following(ops):
    """`ops` and every op that consumes their outputs or waits for them, directly
    or not, averagers' ops aside."""
    stack, seen = list(ops), set()
    while stack:
        op = stack.pop()
        if op in seen or is_averaging_op(op):
            continue
        seen.add(op)
        stack.extend(_consumers(op))
    return seen


def as_op(item):
    """`item` if it is an op, else the op of `item` (a tensor or a variable's value)."""
    return item if isinstance(item, tf.Operation) else item.op


def _function_names(op):
    names = set()
    for value in op.node_def.attr.values():
        if value.HasField("func"):
            names.add(value.func.name)
        names.update(f.name for f in value.list.func)
    return names


def _caller(op):
    """The op of the enclosing graph that runs the function `op` belongs to
    (a `tf.cond` branch, a loop body), if `op` is wired to that function's
    outputs; None if running the function does not run `op`."""
    function = op.graph
    wired = ancestors(list(function.outputs) + list(getattr(function, "control_outputs", [])))
    if op not in wired:
        return None
    outer = function.outer_graph
    for candidate in outer.get_operations():
        if function.name in _function_names(candidate):
            return candidate
    return None


def update_ops_to_run(graph, ran):
    """The `UPDATE_OPS` ops (batch-norm statistics) that running the ops `ran`
    leaves out, for the averaging update to run first.

    An op inside a `tf.cond` or `tf.while_loop` branch that the run already
    runs is left out; one it does not run cannot be run from outside the
    branch: ValueError, naming it.
    """
    extra = []
    for item in graph.get_collection(tf.GraphKeys.UPDATE_OPS):
        op = inner = as_op(item)
        while op is not None and op.graph is not graph:
            op = _caller(op)
        if op is not None and op in ran:
            continue
        if op is None or op._get_control_flow_context() is not None:
            raise ValueError(
                "The UPDATE_OPS op %r is built inside a tf.cond or tf.while_loop branch and "
                "the train op does not run it, so nothing outside the branch can run it "
                "before the averages are updated. Run it inside the branch (return the "
                "branch's output under tf.control_dependencies([op])), or build it outside "
                "the branch." % inner.name)
        extra.append(op)
    return extra


def training_step(graph, ran):
    """(the `UPDATE_OPS` ops that running the ops `ran` leaves out, which the
    averaging update runs first; every op the training step runs: `ran` and
    those ops' ancestors). ValueError as `update_ops_to_run`."""
    extra = update_ops_to_run(graph, ran)
    return extra, (ran | ancestors(extra) if extra else ran)
