"""Schedule tables without training, the plot-schedule and plot-run commands, and their PNGs."""

from __future__ import annotations

import json
import warnings

import matplotlib.image
import pytest
from tiny import RandomTokens, save_tiny_bert_folder, tiny_bert

from hf_dals import DALSTrainer, DALSTrainingArguments, get_strategy, schedules
from hf_dals.cli import main
from hf_dals.lr_trace import (
    assumed_phases,
    find_trainer_state,
    load_log_history,
    logged_phases,
    run_series,
    schedule_table,
)
from hf_dals.plots import PLOT_DPI, RUN_FIGURE_WIDTH, RUN_PANEL_HEIGHT, SCHEDULE_FIGURE_WIDTH, SCHEDULE_ROW_HEIGHT

STEPS = 40
# Boundary steps: the first update, the end of a 10% warmup, the middle and the last update.
CHOSEN_STEPS = (1, 4, 5, 20, 40)


def strategy_args(tmp_path, name: str, **kwargs) -> DALSTrainingArguments:
    return DALSTrainingArguments(output_dir=str(tmp_path), lr_strategy=name, report_to="none", use_cpu=True, **kwargs)


def scheduler_lrs(name: str, model, args, steps: int) -> list[list[float]]:
    """Step the strategy's own scheduler and return, for each step 1..steps, the lr of every group."""
    optimizer, scheduler = get_strategy(name).build(model, args, steps)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            rows.append([group["lr"] for group in optimizer.param_groups])
            scheduler.step()
    return rows


def png_size(path) -> tuple[int, int]:
    """Return (width, height) in pixels."""
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


# -- schedule_table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["dals", "dals_acc", "stlr_discriminative", "llrd_adamw", "ulmfit", "one_cycle", "hf_default"]
)
def test_schedule_table_equals_scheduler(tmp_path, name):
    model = tiny_bert(num_layers=3)
    table = schedule_table(name, model, STEPS, args=strategy_args(tmp_path, name))
    expected = scheduler_lrs(name, model, strategy_args(tmp_path, name), STEPS)
    assert table["steps"] == list(range(1, STEPS + 1))
    for step in CHOSEN_STEPS:
        observed = [series[step - 1] for series in table["groups"].values()]
        assert observed == expected[step - 1], f"step {step}"


def test_schedule_table_dals_follows_warmup_cosine(tmp_path):
    table = schedule_table("dals", tiny_bert(num_layers=3), STEPS, args=strategy_args(tmp_path, "dals"))
    warmup = schedules.warmup_steps_from_fraction(STEPS, 0.1)
    for step in CHOSEN_STEPS:
        multiplier = schedules.warmup_cosine(step - 1, warmup_steps=warmup, total_steps=STEPS)
        assert table["depths"]["head"][step - 1] == pytest.approx(5e-4 * multiplier, rel=1e-12), f"step {step}"


def test_schedule_table_rows_are_depths_bottom_to_top(tmp_path):
    table = schedule_table("stlr_discriminative", tiny_bert(num_layers=3), STEPS)
    assert list(table["depths"]) == ["embeddings", "layer_0", "layer_1", "layer_2", "head"]
    peak = max(table["depths"]["head"])
    assert peak == pytest.approx(5e-4)
    assert max(table["depths"]["layer_2"]) == pytest.approx(peak / 2.6)


def test_schedule_table_flat_strategy_rows_are_groups():
    table = schedule_table("cosine_sgd", tiny_bert(num_layers=2), STEPS)
    assert list(table["depths"]) == ["decay", "no_decay"]


def test_schedule_table_leaves_weights_unchanged():
    model = tiny_bert(num_layers=2)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    schedule_table("dals", model, STEPS)
    changed = [name for name, param in model.named_parameters() if not param.equal(before[name])]
    assert changed == []


@pytest.mark.parametrize(
    "steps, message",
    [(0, "invalid num_training_steps: 0"), (2.5, "invalid num_training_steps: 2.5")],
)
def test_schedule_table_rejects_invalid_steps(steps, message):
    with pytest.raises(ValueError, match=message):
        schedule_table("dals", tiny_bert(num_layers=2), steps)


def test_schedule_table_rejects_arguments_of_another_strategy(tmp_path):
    with pytest.raises(ValueError, match="args are for lr_strategy 'adamw' but the table is for 'dals'"):
        schedule_table("dals", tiny_bert(num_layers=2), STEPS, args=strategy_args(tmp_path, "adamw"))


# -- phases ----------------------------------------------------------------------------------------


def test_assumed_phases_switch_at_bounds():
    sequence = assumed_phases(10, (0.3, 0.6))
    assert sequence["phases"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert sequence["source"] == "assumed"


@pytest.mark.parametrize("bounds", [(0.7, 0.3), (-0.1, 0.5), (0.5, 1.5), (0.5,)])
def test_assumed_phases_reject_invalid_bounds(bounds):
    with pytest.raises(ValueError, match="invalid phase bounds"):
        assumed_phases(10, bounds)


def test_logged_phases_read_dals_phase():
    history = [{"loss": 1.0, "dals_phase": 0, "step": 2}, {"eval_loss": 0.9, "step": 2}, {"loss": 0.8, "dals_phase": 2, "step": 4}]
    assert logged_phases(history) == {"steps": [2, 4], "phases": [0, 2], "source": "logged"}


def test_logged_phases_none_without_dals():
    assert logged_phases([{"loss": 1.0, "step": 2}]) is None


# -- finished runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dals_run(tmp_path_factory):
    """A 12-step DALS run of a 3-layer tiny BERT, logged every 2 steps and evaluated every 6."""
    output_dir = tmp_path_factory.mktemp("dals-run")
    args = DALSTrainingArguments(
        output_dir=str(output_dir),
        lr_strategy="dals",
        per_device_train_batch_size=8,
        max_steps=12,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = DALSTrainer(
        model=tiny_bert(num_layers=3), args=args, train_dataset=RandomTokens(size=96), eval_dataset=RandomTokens(size=16, seed=1)
    )
    trainer.train()
    trainer.save_state()
    return output_dir


def test_run_series_collects_logged_quantities(dals_run):
    _, history = load_log_history(dals_run)
    series = run_series(history)
    assert list(series["lr"]) == ["embeddings", "layer_0", "layer_1", "layer_2", "head"]
    assert series["lr"]["head"][0] == [2, 4, 6, 8, 10, 12]
    assert series["loss"][0] == [2, 4, 6, 8, 10, 12]
    assert series["eval_loss"][0] == [6, 12]
    assert series["phases"]["steps"] == [2, 4, 6, 8, 10, 12]
    assert set(series["trust_ratio"]) == {"embeddings", "layer_0", "layer_1", "layer_2", "head"}


def test_run_series_without_training_loss_raises():
    with pytest.raises(ValueError, match="the run logged no training loss"):
        run_series([{"eval_loss": 1.0, "step": 3}])


def test_find_trainer_state_takes_latest_checkpoint(tmp_path):
    for step in (4, 12, 8):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    assert find_trainer_state(tmp_path) == tmp_path / "checkpoint-12" / "trainer_state.json"


def test_find_trainer_state_missing_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no trainer_state.json in {tmp_path}"):
        find_trainer_state(tmp_path)


# -- the commands and their PNGs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"), num_layers=3)


def test_plot_schedule_writes_png(model_dir, tmp_path, capsys):
    out = tmp_path / "schedules.png"
    status = main(
        ["plot-schedule", "--lr_strategy", "dals", "stlr_discriminative", "--model", str(model_dir), "--steps", "60", "--out", str(out)]
    )
    assert status == 0
    assert out.stat().st_size > 20_000
    assert png_size(out) == (round(SCHEDULE_FIGURE_WIDTH * PLOT_DPI), round(2 * SCHEDULE_ROW_HEIGHT * PLOT_DPI))
    assert f"wrote {out}: dals, stlr_discriminative over 60 steps" in capsys.readouterr().out


def test_plot_schedule_from_config_and_knobs(tmp_path):
    config_only = tmp_path / "config-only"
    tiny_bert(num_layers=2).config.save_pretrained(config_only)
    out = tmp_path / "llrd.png"
    status = main(
        [
            "plot-schedule", "--lr_strategy", "llrd_adamw", "--model", str(config_only), "--from_config",
            "--steps", "30", "--learning_rate", "1e-4", "--layer_lr_decay", "0.5", "--out", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    assert png_size(out) == (round(SCHEDULE_FIGURE_WIDTH * PLOT_DPI), round(SCHEDULE_ROW_HEIGHT * PLOT_DPI))


def test_plot_schedule_phases_from_run(model_dir, dals_run, tmp_path):
    out = tmp_path / "dals-logged.png"
    status = main(
        ["plot-schedule", "--lr_strategy", "dals", "--model", str(model_dir), "--steps", "12", "--run", str(dals_run), "--out", str(out)]
    )
    assert status == 0
    assert out.stat().st_size > 10_000


def test_plot_schedule_run_without_phases_fails(model_dir, tmp_path, capsys):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 1.0, "step": 1}]}))
    status = main(["plot-schedule", "--lr_strategy", "dals", "--model", str(model_dir), "--steps", "5", "--run", str(tmp_path)])
    assert status == 1
    assert "has no dals_phase entries" in capsys.readouterr().err


def test_plot_schedule_missing_model_fails(tmp_path, capsys):
    status = main(["plot-schedule", "--lr_strategy", "dals", "--model", str(tmp_path / "absent"), "--steps", "5"])
    assert status == 1
    assert "hf-dals plot-schedule: error: could not load" in capsys.readouterr().err


def test_plot_schedule_knob_of_another_strategy_fails(model_dir, tmp_path, capsys):
    out = tmp_path / "never.png"
    status = main(
        ["plot-schedule", "--lr_strategy", "dals", "--model", str(model_dir), "--steps", "5", "--stlr_ratio", "8", "--out", str(out)]
    )
    assert status == 1
    assert "lr_strategy 'dals' does not use stlr_ratio" in capsys.readouterr().err
    assert not out.exists()


def test_plot_schedule_rejects_zero_steps(capsys):
    with pytest.raises(SystemExit):
        main(["plot-schedule", "--lr_strategy", "dals", "--steps", "0"])
    assert "invalid step count 0" in capsys.readouterr().err


def test_plot_run_writes_png(dals_run, tmp_path, capsys):
    out = tmp_path / "run.png"
    assert main(["plot-run", str(dals_run), "--out", str(out)]) == 0
    assert out.stat().st_size > 20_000
    # Four panels: learning rates, loss, DALS phase, trust ratios.
    assert png_size(out) == (round(RUN_FIGURE_WIDTH * PLOT_DPI), round(4 * RUN_PANEL_HEIGHT * PLOT_DPI))
    assert f"wrote {out} from {dals_run / 'trainer_state.json'}" in capsys.readouterr().out


def test_plot_run_default_output_in_run_folder(dals_run):
    assert main(["plot-run", str(dals_run)]) == 0
    assert png_size(dals_run / "run_plot.png")[0] == round(RUN_FIGURE_WIDTH * PLOT_DPI)


def test_plot_run_without_state_fails(tmp_path, capsys):
    assert main(["plot-run", str(tmp_path)]) == 1
    assert "hf-dals plot-run: error: no trainer_state.json" in capsys.readouterr().err
