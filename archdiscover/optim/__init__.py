r"""Bregman optimizers (``LinBreg``, ``AdaBreg``) and the proximal-gradient baseline ``ProxSGD``.

All three are :class:`torch.optim.Optimizer` s regularized by a
:class:`~archdiscover.regularizers.Regularizer` ``J`` per param group (key ``"reg"``).

**Linearized Bregman iterations** (Bungert et al., JMLR 2022, Alg. 1-3) minimize the loss
``L`` while moving in the geometry of the elastic net
``J_delta(theta) = J(theta) + 1/(2 delta) ||theta||^2``. They keep a subgradient
``v in dJ_delta(theta)`` and iterate

.. math::
    v_{k+1} = v_k - \tau\, d_k, \qquad \theta_{k+1} = \mathrm{prox}_{\delta J}(\delta v_{k+1}),

where ``d_k`` is the gradient ``g_k`` (LinBreg), its heavy-ball average (LinBreg with
momentum) or Adam's bias-corrected ``m_hat / (sqrt(s_hat) + eps)`` (AdaBreg). The start is
``v_0 = theta_0 / delta + p_0`` with ``p_0 in dJ(theta_0)``, so ``theta_0`` is a fixed point of
the prox: a sparse initialization stays exactly as sparse until the accumulated gradient
pushes a coordinate (or group) of ``v`` past the threshold ``lam`` -- the *inverse scale
space*: parameters enter one by one, the most significant first.

Modules: ``_base`` (shared machinery, the subgradient variable), ``_functional`` (the update
kernels and the one dispatcher among ``single`` / ``foreach`` / ``compiled`` / ``ckernel``),
``linbreg``, ``adabreg``, ``proxsgd``, ``_rowkernel`` (LinBreg's CPU C kernel).
"""

from ._base import IMPLS, RegularizedOptimizer
from .adabreg import AdaBreg
from .linbreg import LinBreg
from .proxsgd import ProxSGD

__all__ = ["IMPLS", "AdaBreg", "LinBreg", "ProxSGD", "RegularizedOptimizer"]
