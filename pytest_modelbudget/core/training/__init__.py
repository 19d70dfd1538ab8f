"""One training step: counted on meta twins (:mod:`.count`), run for real on clones
(:mod:`.step`), its memory (:mod:`.memory`) and optimizer (:mod:`.optimizers`)."""
