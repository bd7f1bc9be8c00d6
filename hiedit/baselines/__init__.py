"""Baseline editors run through the same sequential stream as HiEdit, one module per editor.

Each module holds a frozen settings dataclass with ``from_mapping(values, where)`` (its
``baselines.<name>`` section of ``config.yaml``) and ``build(settings, model, tokenizer, *,
module_names, seed, stats)``, which returns an editor satisfying
:class:`hiedit.evaluation.stream.SequentialEditor`.

- ``ft_m``: FT-M, EasyEdit's fine-tuning on the answer tokens (``FTMConfig``).
- ``ultraedit``: UltraEdit, lifelong-normalised closed-form edits per turn (``UltraEditConfig``).
"""
