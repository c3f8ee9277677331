"""Training stage: data-parallel SASRec training on Ray Train, evaluation and bundle export."""
