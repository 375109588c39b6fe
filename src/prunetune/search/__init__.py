"""`prunetune sweep`: the search space (space), the study storage (storage), what a trial is scored by
(objective), the dense reference (reference) and the study with its outputs (study: `sweep`)."""
