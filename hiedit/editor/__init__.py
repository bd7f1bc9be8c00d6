"""The HiEdit editor: gradient capture, low-level editor network, router, side path, training, commits.

Public API::

    from hiedit.editor import HiEditor, load_editor
    editor = load_editor(job_cfg, model, tokenizer, checkpoint)   # None = seeded untrained networks
    step = editor.edit_records(records)   # capture, route, compute, commit in place -> EditStep
    editor.edit([{"prompt": ..., "target_new": ...}])   # EasyEdit-shaped requests
    editor.save_state(path); editor.load_state(path); editor.reset_model()

Training is :func:`hiedit.editor.trainer.train_editor` (CLI: ``python -m hiedit train``).

Where this implementation deliberately differs from the public research code (docs/method.md §9):

- Every network is trained by many optimiser steps (every ``update_every`` trajectory steps and at
  each trajectory's end, over several trajectories), not one step per run.
- Temporary edits are evaluated through a low-rank side path (``y = xWᵀ + m·s·(xAᵀ)B``), not by
  in-place writes: autograd reaches the low-level network's outputs and, through the
  straight-through mask, the router at every step, so the pathwise gradient, the L2 term and the
  intrinsic reward all train what they are meant to train.
- The router's score-function term uses the Plackett–Luce log-probability of the Gumbel-top-K
  sample weighted by the detached intrinsic reward ``r_high = L_low(1) − L_low(ω)``.
- The router's own normaliser is updated with every capture (never left at its initial state).
- LM gradients are captured at the current (edited) weights; nothing is reverted, so weights
  never drift through repeated low-precision apply/revert.
- Runs are seeded through explicit ``torch.Generator`` objects, never at import.
- Captures stay in memory; only the K selected modules' updates are computed at inference, as
  low-rank factors, and committed in place by one grouped low-rank update (exact in bf16/fp16 with
  a compensation buffer). Update norms use n × n Gram matrices; no dense Δ is formed.
- The learned step size is parametrised as ``η_m = lr · exp(ρ_m)`` so Adam changes it by relative
  amounts, with its own Adam rate ``training.step_size_lr`` (MEND's ``lr_lr``; ``meta_lr`` when
  absent). The blocks' non-linearity is ``clamp_min(0)``, whose gradient at 0 is 1: with the
  zero-initialised up-projection a ``relu`` would never receive a gradient.
- The locality KL is taken over the unrelated tuple's answer positions; the layers below the first
  candidate module are computed once per tuple and cached (they are never edited).
"""

from hiedit.editor.api import EditStep, HiEditor, load_editor, network_identity
from hiedit.editor.lowlevel import Factors

__all__ = ["EditStep", "Factors", "HiEditor", "load_editor", "network_identity"]
