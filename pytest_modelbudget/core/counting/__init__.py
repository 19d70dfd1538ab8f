"""Counting at the ATen dispatch level: MACs, params, size, traffic, the peak-memory estimate
(:mod:`.count`), the MAC convention (:mod:`.formulas`), what a model holds (:mod:`.held`)."""
