"""The model card of DALSTrainer, on a real recipe run, and push_to_hub against a loopback Hub."""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from hub_server import LoopbackHub
from tiny import RandomTokens, save_tiny_bert_folder, tiny_bert

from hf_dals import DALSTrainer, DALSTrainingArguments
from hf_dals.modelcard import DALS_PAPER, SECTION_TITLE
from hf_dals.tasks import PACKAGED_TREC_DIR

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"
REPO_ID = "hf-dals-tests/tiny-trec-dals"


def recipe_arguments(model_dir: Path, output_dir: Path) -> list[str]:
    """Fine-tune the tiny BERT with DALS on 48 real TREC questions for one epoch (6 steps)."""
    return [
        "--task", "trec",
        "--data_dir", str(PACKAGED_TREC_DIR),
        "--model_name_or_path", str(model_dir),
        "--max_train_samples", "48",
        "--max_eval_samples", "24",
        "--max_test_samples", "24",
        "--max_seq_length", "32",
        "--lr_strategy", "dals",
        "--learning_rate", "5e-2",
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8",
        "--logging_steps", "2",
        "--output_dir", str(output_dir),
        "--use_cpu",
        "--disable_tqdm", "true",
        "--dataloader_pin_memory", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def recipe_run(tiny_model_dir, tmp_path_factory):
    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    output_dir = tmp_path_factory.mktemp("card-run")
    metrics, trainer = recipe.main(recipe_arguments(tiny_model_dir, output_dir))
    return metrics, trainer, output_dir


def card_table(card_text: str, heading: str) -> list[list[str]]:
    """Return the body rows of the first Markdown table after ``heading``, cells stripped of backticks."""
    after_heading = card_text.split(heading, 1)[1]
    table = next(block for block in after_heading.split("\n\n") if block.lstrip().startswith("|"))
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]


# -- the card of a real run ------------------------------------------------------------------------


def test_card_has_strategy_section(recipe_run):
    _, _, output_dir = recipe_run
    text = (output_dir / "README.md").read_text(encoding="utf-8")
    assert SECTION_TITLE in text
    assert 'lr_strategy="dals"' in text
    assert "- generation: 5 (joint layer-time methods)" in text
    assert DALS_PAPER in text
    assert text.index(SECTION_TITLE) < text.index("## Training procedure")


def test_card_lists_resolved_hyperparameters(recipe_run):
    _, trainer, output_dir = recipe_run
    text = (output_dir / "README.md").read_text(encoding="utf-8")
    rows = dict(card_table(text, "### Strategy hyperparameters"))
    resolved = trainer.args.strategy_hyperparameters()
    assert list(rows) == [name for name in trainer.strategy.hyperparameter_names if name in resolved]
    assert rows["learning_rate"] == "0.05"
    assert rows["momentum"] == "0.9"
    assert rows["warmup_fraction"] == "0.1"


def test_card_group_table_matches_optimizer(recipe_run):
    _, trainer, output_dir = recipe_run
    text = (output_dir / "README.md").read_text(encoding="utf-8")
    rows = card_table(text, "### Parameter groups")
    groups = trainer.optimizer.param_groups
    assert [row[0] for row in rows] == [group["name"] for group in groups]
    assert [row[1] for row in rows] == [str(group["depth"]) for group in groups]
    assert [int(row[2].replace(",", "")) for row in rows] == [sum(p.numel() for p in g["params"]) for g in groups]
    assert [float(row[3]) for row in rows] == pytest.approx([0.05] * len(groups))
    assert [float(row[4]) for row in rows] == [group["weight_decay"] for group in groups]
    assert {row[0] for row in rows} >= {"embeddings.decay", "layer_0.decay", "layer_1.no_decay", "head.decay"}


def test_card_reports_final_validation_and_test_metrics(recipe_run):
    metrics, _, output_dir = recipe_run
    text = (output_dir / "README.md").read_text(encoding="utf-8")
    rows = {(split, name): value for split, name, value in card_table(text, "### Final metrics")}
    assert float(rows[("validation", "accuracy")]) == pytest.approx(metrics["eval_accuracy"], abs=5e-4)
    assert float(rows[("test", "accuracy")]) == pytest.approx(metrics["test_accuracy"], abs=5e-4)
    assert float(rows[("test", "loss")]) == pytest.approx(metrics["test_loss"], rel=1e-3)
    assert ("test", "runtime") not in rows


def test_card_points_trainer_optimizer_entries_to_strategy(recipe_run):
    _, _, output_dir = recipe_run
    text = (output_dir / "README.md").read_text(encoding="utf-8")
    assert '- optimizer: set by `lr_strategy="dals"`' in text
    assert '- lr_scheduler_type: set by `lr_strategy="dals"`' in text
    assert not re.search(r"^- optimizer: Use ", text, flags=re.MULTILINE)
    assert re.search(r"^- num_epochs: 1\.0$", text, flags=re.MULTILINE)


def test_card_metadata_is_valid_hub_yaml(recipe_run):
    _, _, output_dir = recipe_run
    path = output_dir / "README.md"
    metadata = metadata_load(path)
    assert metadata["library_name"] == "transformers"
    assert "hf-dals" in metadata["tags"]
    assert "dals" in metadata["tags"]
    assert metadata["datasets"] == ["CogComp/trec"]
    assert metadata["metrics"] == ["accuracy"]
    # Parsing model-index into EvalResult objects fails on a malformed entry.
    card = ModelCard.load(path, ignore_metadata_errors=False)
    assert [result.metric_type for result in card.data.eval_results] == ["accuracy"]
    assert card.data.eval_results[0].dataset_type == "CogComp/trec"
    assert card.data.eval_results[0].dataset_split is None


def test_card_before_training_says_groups_unknown(tmp_path):
    args = DALSTrainingArguments(output_dir=str(tmp_path), lr_strategy="stlr_discriminative", report_to="none", use_cpu=True)
    trainer = DALSTrainer(model=tiny_bert(num_layers=2), args=args, train_dataset=RandomTokens())
    trainer.create_model_card(tags="my-tag")
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "its groups are unknown" in text
    assert "No evaluation was logged" in text
    assert metadata_load(tmp_path / "README.md")["tags"][:3] == ["my-tag", "hf-dals", "stlr_discriminative"]
    assert DALS_PAPER + "](" in text
    assert "is described in" not in text


def test_hf_default_card_keeps_trainer_optimizer_entry(tmp_path):
    args = DALSTrainingArguments(output_dir=str(tmp_path), lr_strategy="hf_default", report_to="none", use_cpu=True)
    trainer = DALSTrainer(model=tiny_bert(num_layers=2), args=args, train_dataset=RandomTokens())
    trainer.create_optimizer()
    trainer.create_model_card()
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^- optimizer: Use \S*adamw", text, flags=re.MULTILINE | re.IGNORECASE)
    # Trainer builds these groups itself and leaves them unnamed.
    assert [row[0] for row in card_table(text, "### Parameter groups")] == ["group_0", "group_1"]


# -- push_to_hub against a loopback Hub ------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed_run(tiny_model_dir, tmp_path_factory):
    """Run the recipe with --push_to_hub in a subprocess whose HF_ENDPOINT is a loopback Hub.

    The token goes in with --hub_token, the riskiest way, because TrainingArguments keep it.
    Debug logging of huggingface_hub and info logging of transformers are on, so that the log
    the test searches for the token is as long as a user can make it.
    """
    token = "hf_" + secrets.token_hex(17)
    output_dir = tmp_path_factory.mktemp("pushed-run")
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env.pop("HF_TOKEN", None)
    with LoopbackHub() as hub:
        env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_VERBOSITY="debug",
            TRANSFORMERS_VERBOSITY="info",
            HF_HOME=str(tmp_path_factory.mktemp("hf-home")),
            NO_PROXY="127.0.0.1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            OMP_NUM_THREADS="1",
        )
        command = [
            sys.executable,
            str(RECIPE),
            *recipe_arguments(tiny_model_dir, output_dir),
            "--log_level", "info",
            "--push_to_hub",
            "--hub_model_id", REPO_ID,
            "--hub_token", token,
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return {"hub": hub, "token": token, "result": result, "output_dir": output_dir}


def test_push_recipe_exits_cleanly(pushed_run):
    result = pushed_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_push_talks_only_to_known_endpoints(pushed_run):
    hub = pushed_run["hub"]
    assert hub.created_repos == [REPO_ID]
    assert hub.unexpected_requests() == []
    assert {request.route for request in hub.requests} == {"create", "validate_yaml", "preupload", "commit"}


def test_push_sends_the_token_to_the_hub(pushed_run):
    authorizations = {request.authorization for request in pushed_run["hub"].requests}
    assert authorizations == {f"Bearer {pushed_run['token']}"}


def test_push_final_commit_has_card_and_weights(pushed_run):
    commits = pushed_run["hub"].commits
    assert commits[-1].summary == "End of training"
    files = commits[-1].files
    assert {"README.md", "model.safetensors", "config.json", "all_results.json"} <= set(files)
    assert not [path for path in files if path.startswith("checkpoint-")]
    card = files["README.md"].decode()
    assert SECTION_TITLE in card
    assert "| `embeddings.decay` | 0 |" in card
    assert "| test | `accuracy` |" in card


def test_push_uploads_the_local_card(pushed_run):
    uploaded = pushed_run["hub"].commits[-1].files["README.md"]
    assert uploaded == (pushed_run["output_dir"] / "README.md").read_bytes()


def test_push_never_logs_the_token(pushed_run):
    result, token = pushed_run["result"], pushed_run["token"]
    assert token not in result.stdout
    assert token not in result.stderr


def test_push_never_uploads_the_token(pushed_run):
    token = pushed_run["token"].encode()
    leaked = [
        f"{commit.summary}: {path}"
        for commit in pushed_run["hub"].commits
        for path, content in commit.files.items()
        if token in content
    ]
    assert leaked == []
