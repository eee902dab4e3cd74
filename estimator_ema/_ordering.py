"""Where each average's update goes in a training step."""

from estimator_ema._graphs import ancestors, completions, is_averaging_op, writers


class Order(object):
    """Where each average's update goes in a training step: what it waits for,
    and with lazy rows the group op it may be woven into.

    Without lazy rows the update is built where it waits for the whole step
    (`ready` is then ()). With lazy rows the step and its decay were read
    before the step's writes, so the update of an average need only follow
    the writes of its own variable, where `ready` runs every write of it that
    the training step does (not so with `SyncReplicasOptimizer`, whose chief
    applies in another run) and each is outside control flow (an op that waits
    for one in a `tf.cond` branch not taken does not run); otherwise it follows
    `ready`. And where an average lives on another device than every one of
    the `joined` ops (which the op the update returns waits for; none where
    the caller fetches nothing but `ready`), its update is woven into a group
    op (`NoOp`) on its device among the step's ops that follows every write
    of its variable (the optimizer's group of the applies on a parameter
    server): no control edge then crosses to the joined ops' device for it,
    and no fetch is needed for it. `weaving` False weaves nothing.
    """

    def __init__(self, averager, ready, joined=(), weaving=True):
        self._averager, self._ready = averager, ready
        self._within = ancestors(ready) if averager.step_read_early else None
        self._hosts = []
        if self._within is not None and weaving:
            devices = {op.device for op in joined}
            self._hosts = sorted((op for op in self._within if op.type == "NoOp"
                                  and op._get_control_flow_context() is None
                                  and not is_averaging_op(op)
                                  and op.device not in devices), key=lambda op: op.name)
        self._before = {}  # {host: its ancestors}
        self._written = {}  # {i: _writes(i)}

    def _writes(self, i):
        """The writes the `i`-th average's update follows, or None for `ready`."""
        if i not in self._written:
            self._written[i] = self._find_writes(i)
        return self._written[i]

    def _find_writes(self, i):
        if self._within is None:
            return None
        ops = writers([self._averager.variables[i]], self._averager._ran)
        if any(op not in self._within or op._get_control_flow_context() is not None
               for op in ops):
            return None
        return ops

    def follows(self, i):
        """What the update of the `i`-th average waits for."""
        writes = self._writes(i)
        if writes is None:
            return self._ready
        return completions(sorted(writes, key=lambda op: op.name))

    def weave(self, i, update):
        """Whether `update`, of the `i`-th average, was woven into a host op (a
        control input of it): the first by name on its device that follows
        every write its update follows. (The update waits for nothing else
        that a host could follow: the step and decay it takes were read before
        the writes.)"""
        writes = self._writes(i)
        device = self._averager.averages[i].device
        for host in self._hosts if writes is not None else ():
            if host.device != device:
                continue
            if host not in self._before:
                self._before[host] = ancestors(host)
            if writes <= self._before[host]:
                host._add_control_input(update)
                return True
        return False
