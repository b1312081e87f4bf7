"""The lab: the synthetic world the embedded default is trained and measured on.

- `lab.synthetic`: the simulator, renderer, questions, knowledge documents, writers, blind baselines and tokenizer
  of the synthetic video benchmark;
- `lab.stage0`, `lab.prepare`: the embedded default's tiny backbones, built once and pretrained on that world;
- `lab.probe`, `lab.ablate`, `lab.evidence`: the learning probe, the ablation runner and the evidence table.

`python -m lab <command>` (`vrp-lab`) runs them. The lab imports `vrp` and `data_modules`; nothing in either imports
the lab (tests/test_import_graph.py).
"""
