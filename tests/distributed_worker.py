"""The per-process side of tests/test_distributed.py: DDP with DALSTrainer, FSDP2 at the optimizer level.

Run by the tests on two CPU processes that talk over gloo on 127.0.0.1:

    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT \\
        tests/distributed_worker.py ddp OUT_DIR
    python -m torch.distributed.run ... tests/distributed_worker.py fsdp2 OUT_DIR

Every process writes ``OUT_DIR/<mode>-rank<r>.json``; process 0 also writes the final parameters
to ``OUT_DIR/<mode>-<run>.pt``. The functions that train are imported by the tests as well, to
run the single-process references.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import RandomTokens, tiny_bert  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_dals import DALSTrainer, DALSTrainingArguments, get_strategy  # noqa: E402
from hf_dals.trainer import unwrap_optimizer  # noqa: E402

DDP_STRATEGIES = ("dals", "dals_fast", "dals_acc", "ulmfit", "sam", "lookahead_adamw", "lars")
DDP_STEPS = 6
DDP_BATCH_SIZE = 4  # per process; the single-process reference takes twice as many
DDP_PROCESSES = 2
LOCAL_LOSS_RUN = "dals:local_loss"

FSDP_STRATEGIES = ("dals", "lars", "lamb")
FSDP_STEPS = 5
FSDP_BATCH_SIZE = 8  # in all; each of the processes takes an equal part


# -- DDP with DALSTrainer --------------------------------------------------------------------------


class AlternatingTargets(RandomTokens):
    """Regression targets laid out so that the two processes' losses move in opposite directions.

    With sequential sampling, Accelerate gives process ``r`` batch ``2 t + r`` at step ``t``. The
    targets of that batch are 3 when ``t + r`` is even and 1 otherwise, so a model near 0 has a
    loss near 9, 1, 9, ... on process 0 and 1, 9, 1, ... on process 1: a phase decided from the
    local loss is "explore" on one process and "refine" on the other, while the averaged loss
    stays flat. One process with batches twice as large gets exactly the union of both batches.
    """

    def __init__(self, steps: int = DDP_STEPS, batch_size: int = DDP_BATCH_SIZE, processes: int = DDP_PROCESSES):
        size = steps * batch_size * processes
        super().__init__(size=size, length=8, seed=0)
        batch = torch.arange(size) // batch_size
        step, process = batch // processes, batch % processes
        self.labels = torch.where((step + process) % 2 == 0, 3.0, 1.0)


class PhaseRecorder(TrainerCallback):
    """Record the DALS phase after every optimizer step (``None`` for optimizers without one)."""

    def __init__(self):
        self.phases: list[int | None] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        inner = unwrap_optimizer(optimizer)
        self.phases.append(inner.phase if hasattr(inner, "phase") else None)


class LocalPhaseLossTrainer(DALSTrainer):
    """A DALSTrainer whose processes each decide the DALS phase from their own loss (a test control)."""

    def _phase_loss_for_step(self, local_loss: torch.Tensor) -> torch.Tensor:
        return local_loss


def train_ddp(name: str, output_dir: str, batch_size: int, local_phase_loss: bool = False) -> tuple[DALSTrainer, list]:
    """Train a tiny regression BERT for DDP_STEPS steps; return the trainer and the phase per step."""
    args = DALSTrainingArguments(
        output_dir=output_dir,
        lr_strategy=name,
        per_device_train_batch_size=batch_size,
        max_steps=DDP_STEPS,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
        train_sampling_strategy="sequential",
    )
    recorder = PhaseRecorder()
    trainer_cls = LocalPhaseLossTrainer if local_phase_loss else DALSTrainer
    trainer = trainer_cls(
        model=tiny_bert(num_layers=2, num_labels=1, dropout=0.0),
        args=args,
        train_dataset=AlternatingTargets(),
        callbacks=[recorder],
    )
    # BertForSequenceClassification takes **kwargs but ignores num_items_in_batch, so Trainer would
    # multiply its loss by the number of processes; this keeps one process and two comparable.
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    return trainer, recorder.phases


def parameter_digest(model: torch.nn.Module) -> str:
    """Return a SHA-256 of every parameter's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_ddp(out_dir: Path) -> dict:
    rank = dist.get_rank()
    results = {}
    runs = [(name, False) for name in DDP_STRATEGIES] + [(LOCAL_LOSS_RUN, True)]
    for run, local_phase_loss in runs:
        name = run.split(":")[0]
        trainer, phases = train_ddp(name, str(out_dir / "trainer" / run), DDP_BATCH_SIZE, local_phase_loss)
        results[run] = {"digest": parameter_digest(trainer.model), "phases": phases}
        if rank == 0:
            state = {key: value.detach().clone() for key, value in trainer.model.named_parameters()}
            torch.save(state, out_dir / f"ddp-{run}.pt")
    return results


# -- FSDP2 at the optimizer level ------------------------------------------------------------------


def fsdp_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 64, (FSDP_BATCH_SIZE, 8), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids[:, 0] % 3}


def train_sharded(name: str, dtype: torch.dtype, output_dir: str, mesh=None) -> dict[str, torch.Tensor]:
    """Take FSDP_STEPS optimizer steps of ``name`` on a tiny BERT; return the full parameters.

    With ``mesh``, every encoder layer and the whole model are wrapped in ``fully_shard`` and each
    process takes its part of the batch. Without it, one process trains on the whole batch.
    """
    from torch.distributed.fsdp import fully_shard

    model = tiny_bert(num_layers=2, dropout=0.0).to(dtype)
    batch = fsdp_batch()
    if mesh is not None:
        for layer in model.bert.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        rank, processes = dist.get_rank(), dist.get_world_size()
        batch = {key: value.chunk(processes)[rank] for key, value in batch.items()}
    args = DALSTrainingArguments(
        output_dir=output_dir, lr_strategy=name, training_regime="scratch", use_cpu=True, report_to="none"
    )
    optimizer = get_strategy(name).create_optimizer(model, args)
    for _ in range(FSDP_STEPS):
        loss = model(**batch).loss
        loss.backward()
        if hasattr(optimizer, "observe_loss"):
            observed = loss.detach().clone()
            if mesh is not None:
                dist.all_reduce(observed)
                observed /= dist.get_world_size()
            optimizer.observe_loss(observed)
        optimizer.step()
        optimizer.zero_grad()
    return {key: full_tensor(value) for key, value in model.named_parameters()}


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    tensor = param.full_tensor() if isinstance(param, DTensor) else param
    return tensor.detach().clone()


def count_step_collectives(name: str, output_dir: str, mesh) -> dict:
    """Count the collectives of one optimizer step on the sharded model, DTensor's own included."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.debug import CommDebugMode

    model = tiny_bert(num_layers=2, dropout=0.0)
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    args = DALSTrainingArguments(
        output_dir=output_dir, lr_strategy=name, training_regime="scratch", use_cpu=True, report_to="none"
    )
    optimizer = get_strategy(name).create_optimizer(model, args)
    rank, processes = dist.get_rank(), dist.get_world_size()
    batch = {key: value.chunk(processes)[rank] for key, value in fsdp_batch().items()}
    model(**batch).loss.backward()
    with CommDebugMode() as comm:
        optimizer.step()
    return {
        "collectives": comm.get_total_counts(),
        "groups": len(optimizer.param_groups),
        "tensors": sum(len(group["params"]) for group in optimizer.param_groups),
    }


def check_norm_helper(mesh) -> float:
    """Return the largest relative error of full_tensor_norms on awkward placements."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from hf_dals.optim._distributed import full_tensor_norms, local_tensors

    generator = torch.Generator().manual_seed(2)
    full = [
        torch.randn(1, 5, generator=generator),  # Shard(0) over 2 processes leaves one shard empty
        torch.randn(3, 4, generator=generator),  # uneven Shard(0): 2 rows and 1 row
        torch.randn(4, 6, generator=generator),  # Shard(1)
        torch.randn(7, generator=generator),  # replicated: must not be summed twice
    ]
    placements = [Shard(0), Shard(0), Shard(1), Replicate()]
    layouts = [distribute_tensor(tensor, mesh, [placement]) for tensor, placement in zip(full, placements)]
    doubled = [2 * tensor for tensor in local_tensors(layouts)]
    norms, doubled_norms = full_tensor_norms(layouts, local_tensors(layouts), doubled)
    expected = torch.stack([tensor.norm() for tensor in full])
    errors = torch.cat([(norms - expected).abs() / expected, (doubled_norms - 2 * expected).abs() / (2 * expected)])
    return errors.max().item()


def run_fsdp2(out_dir: Path) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    import hf_dals.optim._distributed as sharded_norms

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rank = dist.get_rank()
    results = {"norm_helper_error": check_norm_helper(mesh), "collectives": {}}
    for name in FSDP_STRATEGIES:
        for dtype in (torch.float64, torch.float32):
            params = train_sharded(name, dtype, str(out_dir / "trainer"), mesh)
            if rank == 0:
                torch.save(params, out_dir / f"fsdp2-{name}-{str(dtype).removeprefix('torch.')}.pt")
        results["collectives"][name] = count_step_collectives(name, str(out_dir / "trainer"), mesh)

    # Control: norms of the local shards only, as an optimizer unaware of sharding would compute.
    reduction_groups = sharded_norms._reduction_groups
    sharded_norms._reduction_groups = lambda tensor: ()
    try:
        for name in FSDP_STRATEGIES:
            params = train_sharded(name, torch.float64, str(out_dir / "trainer"), mesh)
            if rank == 0:
                torch.save(params, out_dir / f"fsdp2-{name}-local_norms.pt")
    finally:
        sharded_norms._reduction_groups = reduction_groups
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ddp", "fsdp2"])
    parser.add_argument("out_dir", type=Path)
    options = parser.parse_args()

    dist.init_process_group("gloo")
    try:
        results = run_ddp(options.out_dir) if options.mode == "ddp" else run_fsdp2(options.out_dir)
        path = options.out_dir / f"{options.mode}-rank{dist.get_rank()}.json"
        path.write_text(json.dumps(results, indent=2))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
