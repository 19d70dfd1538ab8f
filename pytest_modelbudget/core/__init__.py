"""The measuring core: counting (:mod:`.counting`), training steps (:mod:`.training`), timing
(:mod:`.timing`), ``torch.compile`` records (:mod:`.compiling`), devices and leaving a model
as it was. A plain library over torch: no pytest, no budgets, no text for users.
"""
