"""``DALSTrainer``: a ``transformers.Trainer`` whose optimizer and schedule come from a strategy."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .checkpointing import check_strategy_record, write_strategy_record
from .grouping import check_param_coverage
from .modelcard import final_metrics, strategy_section, update_model_card
from .parallel import check_deepspeed_config, check_fsdp_settings, load_deepspeed_config
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

    ``create_optimizer``, ``create_scheduler``, ``training_step``, ``log``, ``create_model_card``
    and ``train`` are overridden, plus the private ``_save_optimizer_and_scheduler`` of
    transformers 5.x:

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
      to Trainer's own ``learning_rate``, which is group 0 only. For DALS it also adds the phase
      (``dals_phase``) and the mean trust ratio of every depth (``trust_ratio/layer_3``). Every
      ``report_to`` logger (TensorBoard, W&B, ...) receives these keys every ``logging_steps``.
    * ``create_model_card`` writes Trainer's card and adds a "Learning-rate strategy" section and
      the tags ``hf-dals`` and the strategy name (see :mod:`hf_dals.modelcard`).
    * ``_save_optimizer_and_scheduler`` also writes ``hf_dals_strategy.json`` into each checkpoint,
      and ``train(resume_from_checkpoint=...)`` raises ``ValueError`` when that checkpoint was
      written with another ``lr_strategy`` (see :mod:`hf_dals.checkpointing`).

    Building the trainer raises when a DeepSpeed or FSDP set-up would drop the strategy's groups or
    schedule, or break its trust ratios (see :mod:`hf_dals.parallel`).

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
        self._check_parallel_setup()

    @property
    def strategy(self) -> Strategy:
        return get_strategy(self.args.lr_strategy)

    # -- distributed set-ups and checkpoints ----------------------------------------------------

    def _check_parallel_setup(self) -> None:
        """Raise if DeepSpeed or FSDP would replace or break the strategy's optimizer or schedule."""
        strategy = self.strategy
        # hf_default is plain Trainer, and an optimizer passed to __init__ replaces the strategy's.
        if strategy.delegates_to_trainer or self.optimizer is not None:
            return
        deepspeed_config = self._deepspeed_config()
        if deepspeed_config is not None:
            check_deepspeed_config(deepspeed_config, strategy)
        fsdp_settings = self._fsdp_settings()
        if fsdp_settings is not None:
            check_fsdp_settings(*fsdp_settings, strategy)

    def _deepspeed_config(self) -> dict | None:
        # TrainingArguments(deepspeed=...) parses the config into hf_deepspeed_config; `accelerate
        # launch` with a DeepSpeed config file puts it on the accelerator's DeepSpeed plugin instead.
        parsed = getattr(self.args, "hf_deepspeed_config", None)
        if parsed is not None:
            return load_deepspeed_config(parsed)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and isinstance(getattr(plugin, "deepspeed_config", None), Mapping):
            return load_deepspeed_config(plugin.deepspeed_config)
        if self.args.deepspeed:
            return load_deepspeed_config(self.args.deepspeed)
        return None

    def _fsdp_settings(self) -> tuple[int, bool] | None:
        """Return ``(fsdp_version, use_orig_params)`` of the FSDP set-up, or ``None`` without FSDP."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if plugin is not None:
            return int(getattr(plugin, "fsdp_version", 1)), bool(getattr(plugin, "use_orig_params", True))
        # Without a distributed launch Accelerate makes no FSDP plugin, but the arguments still
        # contain the requested set-up. Checking them fails early instead of on the cluster.
        plugin_args = getattr(self.args, "fsdp_plugin_args", None)
        if self.args.fsdp and plugin_args:
            return int(plugin_args.get("fsdp_version", 2)), bool(plugin_args.get("use_orig_params", True))
        return None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Train like ``Trainer.train``; first check that a resumed checkpoint has this ``lr_strategy``."""
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            # True means the last checkpoint in output_dir; Trainer raises if there is none.
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
        if checkpoint is not None:
            check_strategy_record(checkpoint, self.args.lr_strategy)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            write_strategy_record(output_dir, self.args.lr_strategy, self.args.training_regime)

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
            # Trainer scales each micro-batch loss (by the number of micro-batches, or through
            # num_items_in_batch) so that the sum over one optimizer step is that step's mean loss
            # on this process. Heads that accept but ignore num_items_in_batch get a sum that many
            # times too large (transformers issue 47688); the phase uses relative changes of the
            # loss, so only an epoch's shorter last step is affected.
            loss_value = loss.detach().float()
            self._phase_loss = loss_value if self._phase_loss is None else self._phase_loss + loss_value
        if self.accelerator.sync_gradients:
            if self._two_pass_inputs:
                self._second_pass(model)
            optimizer = unwrap_optimizer(self.optimizer)
            if self._phase_loss is not None and hasattr(optimizer, "observe_loss"):
                optimizer.observe_loss(self._phase_loss_for_step(self._phase_loss))
            self._phase_loss = None
            self._step_group_lrs = [group["lr"] for group in self.optimizer.param_groups]
        return loss

    def _phase_loss_for_step(self, local_loss: torch.Tensor) -> torch.Tensor:
        """Return the loss that phase detection observes for this optimizer step.

        ``local_loss`` is this process's mean loss over the step's micro-batches. The result is its
        mean over all processes, so every data-parallel replica decides the same phase and takes
        the same update. This is the only collective that ``DALSTrainer`` itself adds per step.
        The distributed tests override it to return ``local_loss`` and show that the replicas
        then drift apart.
        """
        return self.accelerator.reduce(local_loss, reduction="mean")

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

    def depth_trust_ratios(self) -> dict[str, float]:
        """Return ``{"trust_ratio/<depth name>": mean}`` for DALS at the last optimizer step.

        The mean is over the tensors of the depth: each group's mean trust ratio is weighted by
        the number of tensors in the group. Other optimizers return ``{}``. Reading the values
        synchronises the device, so call it at logging time only.
        """
        optimizer = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        means = getattr(optimizer, "last_trust_ratio_mean", None)
        if not means:
            return {}
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for index, mean in means.items():
            group = optimizer.param_groups[index]
            name = group.get("depth_name") or group.get("name") or f"group_{index}"
            count = len(group["params"])
            totals[name] = totals.get(name, 0.0) + float(mean) * count
            counts[name] = counts.get(name, 0) + count
        return {f"trust_ratio/{name}": totals[name] / counts[name] for name in totals}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs = {**logs, **self.depth_learning_rates()}
            optimizer = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
            if optimizer is not None and hasattr(optimizer, "phase"):
                logs["dals_phase"] = optimizer.phase
            logs.update(self.depth_trust_ratios())
        super().log(logs, start_time)

    # -- model card ------------------------------------------------------------------------------

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write Trainer's model card to ``output_dir/README.md`` and add the learning-rate strategy.

        The arguments are Trainer's. The tags ``hf-dals`` and the strategy name are added to
        ``tags``. The added section lists the strategy, its resolved hyperparameters, the
        optimizer's parameter groups and the last validation (``eval_*``) and test (``test_*``)
        metrics in ``state.log_history``, so create the card after the final ``evaluate`` calls.
        ``push_to_hub`` calls this method before it uploads.
        """
        merged_tags = [tags] if isinstance(tags, str) else list(tags or [])
        for tag in ("hf-dals", self.args.lr_strategy):
            if tag not in merged_tags:
                merged_tags.append(tag)
        super().create_model_card(
            language=language,
            license=license,
            tags=merged_tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )
        if not self.is_world_process_zero():
            return

        strategy = self.strategy
        optimizer = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        resolved = self.args.strategy_hyperparameters()
        section = strategy_section(
            strategy,
            training_regime=self.args.training_regime,
            hyperparameters={name: resolved[name] for name in strategy.hyperparameter_names if name in resolved},
            optimizer_name=None if optimizer is None else f"{type(optimizer).__module__}.{type(optimizer).__name__}",
            param_groups=None if self.optimizer is None else self.optimizer.param_groups,
            metrics=final_metrics(self.state.log_history),
        )
        update_model_card(Path(self.args.output_dir) / "README.md", section, strategy=strategy)
