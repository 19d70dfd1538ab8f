"""The kinds of call, one module each: a forward (:mod:`.forward`), a training step
(:mod:`.train_step`), a compiled forward (:mod:`.compiled`) -- how each is counted, what
timing repeats, its metric rows (:mod:`.metric`; :mod:`.common` for every kind's) and the
options it refuses (:class:`~.kind.CallKind`)."""
