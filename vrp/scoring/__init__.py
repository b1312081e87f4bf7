"""Scoring: what both the training layer (validation accuracy, test and predict steps) and the evaluation layer
(results tables, `vrp ask`, lmms-eval, reports) use to score a `VideoReasoner`: multiple-choice scorers
(`scorers`), torchmetrics metrics (`metrics`) and the rows a scored batch becomes (`rows`).

It sits below both: `vrp.training` and `vrp.evaluation` import it and never each other (tests/test_import_graph.py).
"""
