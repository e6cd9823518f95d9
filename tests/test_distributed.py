"""DDP with DALSTrainer and FSDP2 at the optimizer level, on two CPU processes over gloo.

Each group of tests shares one ``torchrun`` launch of ``tests/distributed_worker.py``, which takes
about 20 s on two busy cores. The single-process references run here, in the test process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(worker.__file__).resolve()

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(mode: str, out_dir: Path) -> list[dict]:
    """Run the worker on two processes; return each process's JSON results, rank 0 first."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(WORKER), mode, str(out_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return [json.loads((out_dir / f"{mode}-rank{rank}.json").read_text()) for rank in range(2)]


def relative_error(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """Return ||actual - expected|| / ||expected|| over all parameters together."""
    difference = sum(((actual[name] - expected[name]) ** 2).sum() for name in expected)
    scale = sum((expected[name] ** 2).sum() for name in expected)
    return (difference / scale).sqrt().item()


def tensors_off(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float, atol: float) -> list:
    """Return the parameters with ||actual - expected|| > rtol * ||expected|| + atol."""
    return [
        name
        for name in expected
        if (actual[name] - expected[name]).norm().item() > rtol * expected[name].norm().item() + atol
    ]


# -- DDP -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    return out_dir, launch("ddp", out_dir)


@pytest.mark.parametrize("name", worker.DDP_STRATEGIES)
def test_ddp_replicas_stay_identical(ddp, name):
    _, (rank0, rank1) = ddp
    assert rank0[name]["digest"] == rank1[name]["digest"]
    assert rank0[name]["phases"] == rank1[name]["phases"]
    assert len(rank0[name]["phases"]) == worker.DDP_STEPS


def test_ddp_local_phase_loss_splits_replicas(ddp):
    # The control for the test above: with the phase taken from each process's own loss, the
    # processes decide different phases, take different updates and stop being replicas.
    _, (rank0, rank1) = ddp
    run = worker.LOCAL_LOSS_RUN
    assert rank0[run]["phases"] != rank1[run]["phases"]
    assert rank0[run]["digest"] != rank1[run]["digest"]


@pytest.mark.parametrize("name", worker.DDP_STRATEGIES)
def test_ddp_matches_one_process_with_double_batch(ddp, name, tmp_path):
    out_dir, (rank0, _) = ddp
    trainer, phases = worker.train_ddp(name, str(tmp_path), 2 * worker.DDP_BATCH_SIZE)
    two_processes = torch.load(out_dir / f"ddp-{name}.pt")
    one_process = {key: value.detach() for key, value in trainer.model.named_parameters()}
    # atol covers the attention key biases, whose gradient is zero up to rounding.
    for key, expected in one_process.items():
        assert torch.allclose(two_processes[key], expected, rtol=1e-5, atol=1e-7), key
    assert phases == rank0[name]["phases"]


# -- FSDP2 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp2")
    return out_dir, launch("fsdp2", out_dir)


@pytest.mark.parametrize("name", worker.FSDP_STRATEGIES)
def test_fsdp2_float64_matches_one_process(fsdp2, name, tmp_path):
    out_dir, _ = fsdp2
    expected = worker.train_sharded(name, torch.float64, str(tmp_path))
    sharded = torch.load(out_dir / f"fsdp2-{name}-float64.pt")
    # Every tensor within 1e-6 relative; atol covers the attention key biases (gradient zero up to
    # rounding, values near 1e-16).
    assert tensors_off(sharded, expected, rtol=1e-6, atol=1e-12) == []


@pytest.mark.parametrize("name", worker.FSDP_STRATEGIES)
def test_fsdp2_float32_matches_one_process(fsdp2, name, tmp_path):
    out_dir, _ = fsdp2
    expected = worker.train_sharded(name, torch.float32, str(tmp_path))
    sharded = torch.load(out_dir / f"fsdp2-{name}-float32.pt")
    # In float32 the two runs sum gradients in another order. LAMB's Adam-stepped biases, which
    # start at zero, then differ by up to 1.5e-6 relative per tensor, so the bound is on the model.
    assert relative_error(sharded, expected) <= 1e-6


@pytest.mark.parametrize("name", worker.FSDP_STRATEGIES)
def test_fsdp2_local_shard_norms_are_wrong(fsdp2, name, tmp_path):
    # The control for the float64 test: trust ratios from the local shards' norms miss the bound.
    out_dir, _ = fsdp2
    expected = worker.train_sharded(name, torch.float64, str(tmp_path))
    local_norms = torch.load(out_dir / f"fsdp2-{name}-local_norms.pt")
    assert tensors_off(local_norms, expected, rtol=1e-6, atol=1e-12) != []


@pytest.mark.parametrize("name", worker.FSDP_STRATEGIES)
def test_fsdp2_step_reduces_norms_once_per_group(fsdp2, name):
    _, (rank0, rank1) = fsdp2
    counts = rank0["collectives"][name]
    assert counts["collectives"] >= 1
    assert counts["collectives"] <= counts["groups"]
    assert counts == rank1["collectives"][name]


def test_full_tensor_norms_odd_placements(fsdp2):
    _, (rank0, rank1) = fsdp2
    assert rank0["norm_helper_error"] <= 1e-6
    assert rank1["norm_helper_error"] <= 1e-6
