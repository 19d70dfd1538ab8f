"""Generation: what a generation asks (:mod:`.spec`), the greedy loop both routes share
(:mod:`.loop`), the loop counted on meta phase by phase (:mod:`.count`), and run for real
where timing repeats it (:mod:`.run`)."""
