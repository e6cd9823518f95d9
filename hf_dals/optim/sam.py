"""SAM whose second half runs as a plain ``optimizer.step()``, so Trainer can drive it."""

from __future__ import annotations

from pytorch_optimizer import SAM

__all__ = ["TwoPassSAM"]


class TwoPassSAM(SAM):
    r"""Sharpness-aware minimization (Foret et al., arXiv:2010.01412) driven in two calls.

    Built on ``pytorch_optimizer.SAM``. With ``adaptive=True`` it is ASAM (Kwon et al.,
    arXiv:2102.11600): the perturbation is :math:`e = \rho\, \theta^2 g / \lVert |\theta| g \rVert`
    instead of :math:`\rho\, g / \lVert g \rVert`.

    The training loop calls :meth:`first_step` after the first backward pass (it moves the weights
    to :math:`\theta + e`), runs the second forward/backward pass, then calls :meth:`step` without
    a closure: it restores :math:`\theta` and applies the base optimizer with the gradient taken at
    :math:`\theta + e`. ``DALSTrainer.training_step`` does this for the strategies that need two
    passes. With a closure, :meth:`step` behaves like ``pytorch_optimizer.SAM.step``.
    """

    def step(self, closure=None):
        """Finish the SAM step: restore the weights and apply the base optimizer."""
        if closure is not None:
            return super().step(closure)
        self.second_step()
        return None
