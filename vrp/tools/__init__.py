"""The commands of `vrp`, above the training and evaluation layers: the Lightning ones (fit / validate / test /
predict, `lightning_cli`) and the tools `cache`, `track`, `export`, `ask` and `lmms-task`, one module
each. `vrp.cli` dispatches to them; nothing below imports them (tests/test_import_graph.py)."""
