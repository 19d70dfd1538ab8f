"""The op registries refuse a second registration of an op instead of silently replacing it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from pytest_modelbudget.core.counting import shape_rules
from pytest_modelbudget.core.counting.formulas import registry as mac_formulas

aten = torch.ops.aten

# (registering decorator, its registry, ops to register, the op the error must name).
# aten.sinh has neither a formula nor a rule: a refusal must not leave it registered.
CASES = [
    (mac_formulas._register, mac_formulas._FORMULAS, (aten.sinh, aten.mm), "aten.mm"),
    (mac_formulas._register, mac_formulas._FORMULAS, (aten.sinh, aten.sinh), "aten.sinh"),
    (shape_rules._rule, shape_rules._RULES, (aten.sinh.default, aten.mm.default), "aten.mm.default"),
    (shape_rules._rule, shape_rules._RULES, (aten.sinh.default, aten.sinh.default), "aten.sinh.default"),
]


@pytest.mark.parametrize(("register", "registry", "ops", "named"), CASES)
def test_a_second_registration_raises_and_changes_nothing(
    register: Callable[..., Callable[[Any], Any]], registry: dict[Any, Any], ops: tuple[Any, ...], named: str
) -> None:
    before = dict(registry)
    with pytest.raises(RuntimeError, match=rf"duplicate .* registrations for {re.escape(named)}$"):
        register(*ops)(lambda *args, **kwargs: 0)
    assert registry == before
