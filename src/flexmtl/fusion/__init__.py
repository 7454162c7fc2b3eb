"""One fusion engine: alike modules of several tasks (or components) run as one op.

The method files (:mod:`flexmtl.sharing.ordering`, :mod:`flexmtl.sharing.allocation`,
:mod:`flexmtl.models`) hold the papers' semantics and the per-task reference forwards;
they call into this package for the fused forwards of a training step:

* :mod:`~flexmtl.fusion.switch` -- :class:`Fusable`, :func:`set_fused`, :func:`is_fused`:
  the one switch between the fused and the reference paths;
* :mod:`~flexmtl.fusion.planning` -- which modules are alike (one signature family), the
  one stacking limit, and the plan of a list of shared blocks;
* :mod:`~flexmtl.fusion.hooks` -- hook introspection (fused paths skip ``forward``);
* :mod:`~flexmtl.fusion.masks` -- dropout masks from random bits;
* :mod:`~flexmtl.fusion.kernels` -- hand-written autograd kernels;
* :mod:`~flexmtl.fusion.orderings` -- the orderings' fused forwards (Eqs. 2, 3, 7);
* :mod:`~flexmtl.fusion.components` -- alike components of a routed layer as one op;
* :mod:`~flexmtl.fusion.dense` -- alike per-task encoders and heads as one product;
* :mod:`~flexmtl.fusion.losses` -- alike per-task losses as one stacked loss.
"""

from flexmtl.fusion.planning import CPU_STACK_LIMIT, register_per_example
from flexmtl.fusion.switch import Fusable, is_fused, set_fused

__all__ = ["Fusable", "set_fused", "is_fused", "register_per_example", "CPU_STACK_LIMIT"]
