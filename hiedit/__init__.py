"""HiEdit: lifelong model editing with hierarchical reinforcement learning (reference reproduction)."""

__version__ = "0.1.0"
