"""Baseline editors run through the same sequential stream as HiEdit, one module per editor.

Each module holds a frozen settings dataclass with ``from_mapping(values, where)`` (its
``baselines.<name>`` section of ``config.yaml``) and ``build(settings, model, tokenizer, *,
module_names, seed, stats)``, which returns an editor satisfying
:class:`hiedit.evaluation.stream.SequentialEditor`.

- ``ft_m``: FT-M, EasyEdit's fine-tuning on the answer tokens (``FTMConfig``).
- ``ultraedit``: UltraEdit, lifelong-normalised closed-form edits per turn (``UltraEditConfig``).
- ``memit``: MEMIT, locate-then-edit closed form on the down-projections (``MEMITConfig``).
- ``alphaedit``: AlphaEdit, MEMIT's update projected onto the null space of generic keys
  (``AlphaEditConfig``). Both share ``locate`` (targets, keys, state) and the fitted key
  statistic of ``key_stats``.
- ``tuning``: a grid search of any baseline's section on the validation slice (its ``search``
  key), the variant's fitted output when a setup gives one.
"""
