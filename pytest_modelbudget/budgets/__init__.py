"""Budgets: the metric table, a call's budget resolved once, checks and verdicts, the baseline
file, and :func:`~.measure.measure_call`, which measures one call and judges it. Typed values,
no text for users."""
