"""``DALSTrainer``: a ``transformers.Trainer`` whose optimizer and schedule come from a strategy."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from transformers import Trainer

from .grouping import check_param_coverage
from .strategies import Strategy, get_strategy
from .training_args import DALSTrainingArguments

__all__ = ["DALSTrainer", "unwrap_optimizer"]

logger = logging.getLogger(__name__)


def unwrap_optimizer(optimizer):
    """Return the optimizer inside Accelerate's ``AcceleratedOptimizer`` wrappers.

    Optimizers that wrap another on purpose (Lookahead, SAM) are returned as they are.
    """
    from accelerate.optimizer import AcceleratedOptimizer

    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


class DALSTrainer(Trainer):
    """A drop-in ``Trainer`` that builds its optimizer and scheduler from ``args.lr_strategy``.

    Only ``create_optimizer``, ``create_scheduler``, ``training_step`` and ``log`` are overridden:

    * ``create_optimizer`` puts every trainable parameter into depth-aware groups (for the
      strategies that use them), builds the strategy's optimizer and checks that every trainable
      parameter is in exactly one group. An optimizer passed to ``__init__`` still wins.
    * ``create_scheduler`` builds the strategy's schedule as a ``LambdaLR``, one multiplier per group.
    * ``training_step`` feeds strategies that watch the loss (DALS) with the training loss of each
      optimizer step, averaged over gradient-accumulation micro-batches and over processes, so that
      every data-parallel replica reaches the same phase. For SAM it runs the second
      forward/backward pass of each step, over all micro-batches of the step (bf16 or full
      precision; fp16 and DeepSpeed raise ``NotImplementedError``).
    * ``log`` adds the learning rate of every depth (``lr/embeddings``, ``lr/layer_3``, ``lr/head``)
      and the DALS phase to Trainer's own ``learning_rate``, which is group 0 only.

    ``lr_strategy="hf_default"`` runs Trainer's own ``create_optimizer`` and ``create_scheduler``,
    so it behaves exactly like plain ``Trainer``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DALSTrainingArguments):
            raise TypeError(
                f"DALSTrainer needs DALSTrainingArguments, got {type(self.args).__name__}; build the "
                "arguments with hf_dals.DALSTrainingArguments(output_dir=..., lr_strategy=...)"
            )
        self._strategy_built_optimizer = False
        self._phase_loss: torch.Tensor | None = None
        self._step_group_lrs: list[float] | None = None
        self._two_pass_inputs: list[tuple] = []

    @property
    def strategy(self) -> Strategy:
        return get_strategy(self.args.lr_strategy)

    # -- optimizer and scheduler -----------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        strategy = self.strategy
        if strategy.delegates_to_trainer:
            optimizer = super().create_optimizer(model)
        else:
            self.optimizer = strategy.create_optimizer(opt_model, self.args)
            optimizer = self.optimizer
        check_param_coverage(opt_model, optimizer)
        self._strategy_built_optimizer = True
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        strategy = self.strategy
        if strategy.delegates_to_trainer:
            return super().create_scheduler(num_training_steps, optimizer)
        if not self._strategy_built_optimizer:
            logger.warning(
                "An optimizer was passed to DALSTrainer, so lr_strategy=%r is not applied; the schedule "
                "is Trainer's lr_scheduler_type=%r.",
                self.args.lr_strategy,
                str(self.args.lr_scheduler_type),
            )
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.lr_scheduler = strategy.create_scheduler(
            optimizer, self.args, num_training_steps, steps_per_epoch=self._steps_per_epoch(num_training_steps)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _steps_per_epoch(self, num_training_steps: int) -> float:
        # Trainer fills state.max_steps and state.num_train_epochs before it builds the scheduler.
        # With max_steps given, num_train_epochs is rounded up, so this is then an estimate.
        epochs = getattr(self.state, "num_train_epochs", 0) or self.args.num_train_epochs
        return num_training_steps / max(float(epochs), 1e-12)

    # -- loss signal and logging -----------------------------------------------------------------

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None) -> torch.Tensor:
        strategy = self.strategy
        loss = super().training_step(model, inputs, num_items_in_batch)
        if strategy.needs_two_passes and self._strategy_built_optimizer:
            self._check_two_pass_support()
            self._two_pass_inputs.append((inputs, num_items_in_batch))
        if strategy.needs_loss:
            # Trainer divides each micro-batch loss by the number of micro-batches, so the sum over
            # the micro-batches of one optimizer step is that step's mean loss on this process.
            loss_value = loss.detach().float()
            self._phase_loss = loss_value if self._phase_loss is None else self._phase_loss + loss_value
        if self.accelerator.sync_gradients:
            if self._two_pass_inputs:
                self._second_pass(model)
            optimizer = unwrap_optimizer(self.optimizer)
            if self._phase_loss is not None and hasattr(optimizer, "observe_loss"):
                optimizer.observe_loss(self.accelerator.reduce(self._phase_loss, reduction="mean"))
            self._phase_loss = None
            self._step_group_lrs = [group["lr"] for group in self.optimizer.param_groups]
        return loss

    def _check_two_pass_support(self) -> None:
        if self.is_deepspeed_enabled:
            raise NotImplementedError(
                f"lr_strategy={self.args.lr_strategy!r} needs two forward/backward passes per step, which "
                "DALSTrainer does not implement under DeepSpeed; use DDP or FSDP, or another strategy"
            )
        if self.args.fp16:
            raise NotImplementedError(
                f"lr_strategy={self.args.lr_strategy!r} with fp16 is not supported: the gradient scaler would "
                "scale the first pass that sets the SAM perturbation; use bf16=True or full precision"
            )

    def _second_pass(self, model: nn.Module) -> None:
        """Run SAM's second pass: perturb, then recompute every micro-batch of this step.

        The first pass (Trainer's own backward calls) left the gradient at the current weights.
        ``first_step`` moves the weights to the perturbed point and clears the gradients; the
        micro-batches of the step run again there, with gradient synchronisation on the last one
        only. Trainer's ``optimizer.step()`` then restores the weights and applies the base update.
        """
        sam = unwrap_optimizer(self.optimizer)
        sam.first_step(zero_grad=True)
        cached, self._two_pass_inputs = self._two_pass_inputs, []
        for index, (inputs, num_items_in_batch) in enumerate(cached):
            last = index == len(cached) - 1
            context = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            with context:
                super().training_step(model, inputs, num_items_in_batch)

    def depth_learning_rates(self) -> dict[str, float]:
        """Return ``{"lr/<depth name>": lr}`` for the last optimizer step (one entry per depth)."""
        if self.optimizer is None:
            return {}
        lrs = self._step_group_lrs or [group["lr"] for group in self.optimizer.param_groups]
        out: dict[str, float] = {}
        for group, lr in zip(self.optimizer.param_groups, lrs):
            depth_name = group.get("depth_name")
            if depth_name is not None:
                out.setdefault(f"lr/{depth_name}", float(lr))
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs = {**logs, **self.depth_learning_rates()}
            optimizer = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
            if optimizer is not None and hasattr(optimizer, "phase"):
                logs["dals_phase"] = optimizer.phase
        super().log(logs, start_time)
