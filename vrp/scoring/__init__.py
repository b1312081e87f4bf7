"""Scoring: what both the training layer (validation accuracy, test and predict steps, stage 0's detector) and the
evaluation layer (results tables, `vrp ask`, lmms-eval, reports) use to score a `VideoReasoner`: multiple-choice
scorers (`scorers`), torchmetrics metrics (`metrics`), the per-question rows a scored batch becomes (`per_question`),
and the object stage's tracks against ground-truth boxes (`detection`).

It sits below both: `vrp.training` and `vrp.evaluation` import it and never each other (tests/test_import_graph.py).
"""
