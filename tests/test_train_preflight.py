"""Bad input stops `hpctune train` before training starts: one line on stderr, exit code 2.

Each case runs the real entry point (``hpctune.train.__main__.main``, what ``python -m
hpctune.train`` and launch.sh run) and then checks that nothing was trained: no
checkpoint, no metrics.json, no "starting" line. Two cases also go through separate
processes to see the exit code and the absence of a traceback for real.
"""

from __future__ import annotations

import pytest

from tests import tiny_assets as ta


def _entry(recipe, capsys, *extra):
    from hpctune.train.__main__ import main
    code = main([str(recipe), *extra])
    err = capsys.readouterr().err
    return code, err


def _nothing_trained(folder):
    out = folder / "output"
    assert not list(out.glob("checkpoint-*")) if out.exists() else True
    assert not (out / "metrics.json").exists()


def _error_line(err: str) -> str:
    # (in-process, stderr may also hold library logging noise from earlier tests; the
    # subprocess tests below check that nothing but the one line is ours)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "hpctune train: starting" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_check_passes_on_the_tiny_recipe(tmp_path, capsys):
    from hpctune.train.__main__ import main
    recipe = ta.write_recipe(tmp_path)
    assert main([str(recipe), "--check"]) == 0
    assert ": ok (480 train rows, 48 eval rows" in capsys.readouterr().out
    _nothing_trained(tmp_path)


def test_model_path_that_does_not_exist(tmp_path, capsys):
    recipe = ta.write_recipe(tmp_path, {"model.model_name_or_path": "/nonexistent/models/llama-7b"})
    code, err = _entry(recipe, capsys)
    assert code == 2
    line = _error_line(err)
    assert "model.model_name_or_path" in line and "no such folder" in line
    _nothing_trained(tmp_path)


def test_hub_name_that_cannot_be_fetched(tmp_path):
    # a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is first imported
    recipe = ta.write_recipe(tmp_path, {"model.model_name_or_path": "no-such-org/no-such-model"})
    proc = ta.train(recipe, HF_HUB_OFFLINE="1")
    assert proc.returncode == 2, ta.tail(proc)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "model.model_name_or_path" in line and "hub lookup failed" in line
    _nothing_trained(tmp_path)


@pytest.mark.parametrize("chat_format", ["none", "chatml"])
def test_dataset_without_the_text_field(tmp_path, capsys, chat_format):
    data = ta.write_dataset(tmp_path / "data", columns=("body",))
    recipe = ta.write_recipe(tmp_path, {"data.dataset_name": str(data), "data.chat_template_format": chat_format})
    code, err = _entry(recipe, capsys)
    assert code == 2
    line = _error_line(err)
    assert "data.dataset_text_field" in line and "'content'" in line and "columns: body" in line
    _nothing_trained(tmp_path)


def test_falcon_target_modules_on_a_llama(tmp_path, capsys):
    recipe = ta.write_recipe(tmp_path, {"method.lora_target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]})
    code, err = _entry(recipe, capsys)
    assert code == 2
    line = _error_line(err)
    assert "method.lora_target_modules" in line
    assert "query_key_value" in line and "Falcon" in line and "q_proj" in line  # names what exists
    _nothing_trained(tmp_path)


def test_dataset_too_short_for_one_batch(tmp_path, capsys):
    data = ta.write_dataset(tmp_path / "data", n_train=3, n_test=2)
    recipe = ta.write_recipe(tmp_path, {"data.dataset_name": str(data)})  # batch 4
    code, err = _entry(recipe, capsys)
    assert code == 2
    line = _error_line(err)
    assert "3 row(s)" in line and "per_device_train_batch_size 4" in line
    _nothing_trained(tmp_path)


def test_missing_eval_split(tmp_path, capsys):
    data = ta.write_dataset(tmp_path / "data", n_test=0)
    recipe = ta.write_recipe(tmp_path, {"data.dataset_name": str(data)})
    code, err = _entry(recipe, capsys)
    assert code == 2
    line = _error_line(err)
    assert "eval split 'test' not found" in line and "data.splits: train" in line
    _nothing_trained(tmp_path)


def test_recipe_rules_run_first_on_the_node(tmp_path, capsys):
    """A recipe the login node refuses is refused by the node too, by the same rule, before
    anything heavy runs (here: 8-bit weights under ZeRO-3)."""
    recipe = ta.write_recipe(tmp_path, {"method.type": "qlora", "method.quant_bits": 8, "deepspeed.zero_stage": 3})
    code, err = _entry(recipe, capsys)
    assert code == 2
    line = _error_line(err)
    assert "method.quant_bits" in line and "[rule quant8-zero3]" in line
    _nothing_trained(tmp_path)


def test_fp16_without_a_gpu(tmp_path, capsys):
    recipe = ta.write_recipe(tmp_path, {"precision": "fp16"})
    code, err = _entry(recipe, capsys)
    assert code == 2 and "fp16 needs a GPU" in _error_line(err)


def test_exit_code_2_through_the_command_lines(tmp_path):
    """A separate process each: the exit status and stderr a user (or Slurm log) sees."""
    recipe = ta.write_recipe(tmp_path, {"model.model_name_or_path": "/no/such/model"})
    proc = ta.hpctune("train", str(recipe))
    assert proc.returncode == 2, ta.tail(proc)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"hpctune: error: {recipe}: model.model_name_or_path: /no/such/model: no such folder on {__import__('os').uname().nodename} [rule node-model]"]

    recipe = ta.write_recipe(tmp_path, {"model.model_name_or_path": "./no/such/model"})
    proc = ta.train(recipe)
    assert proc.returncode == 2, ta.tail(proc)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    _nothing_trained(tmp_path)


def test_version_gates_for_qlora_zero3(tmp_path, monkeypatch):
    """QLoRA + ZeRO-3 needs bitsandbytes>=0.43.0, accelerate>=0.28.0, transformers>4.38.2, ..."""
    from hpctune import recipe as recipe_mod
    from hpctune.errors import ConfigError
    from hpctune.train import preflight
    recipe = recipe_mod.load(ta.write_recipe(tmp_path, {"method.type": "qlora", "deepspeed.zero_stage": 3}))
    preflight.check_versions(recipe, deepspeed_launch=True)  # the installed versions pass
    real = preflight._version
    monkeypatch.setattr(preflight, "_version", lambda pkg: {"bitsandbytes": "0.42.0", "transformers": "4.38.2"}.get(pkg) or real(pkg))
    with pytest.raises(ConfigError) as e:
        preflight.check_versions(recipe, deepspeed_launch=True)
    msg = str(e.value)
    assert "bitsandbytes 0.42.0 is too old, need bitsandbytes>=0.43.0" in msg and "QLoRA + ZeRO-3" in msg
    assert "transformers 4.38.2 is too old" in msg
    lora = recipe_mod.load(ta.write_recipe(tmp_path / "l", {"method.type": "lora"}))
    monkeypatch.setattr(preflight, "_version", lambda pkg: {"bitsandbytes": "0.42.0"}.get(pkg) or real(pkg))
    preflight.check_versions(lora, deepspeed_launch=True)  # LoRA does not need bitsandbytes


def test_a_launch_that_disagrees_with_the_recipe(tmp_path):
    """Hand-made accelerate configs: gradient accumulation / ZeRO stage / precision must match."""
    from hpctune import recipe as recipe_mod
    from hpctune.errors import ConfigError
    from hpctune.train import preflight
    recipe = recipe_mod.load(ta.write_recipe(tmp_path, {"deepspeed.zero_stage": 3, "training.gradient_accumulation_steps": 2}))
    ok = {"deepspeed": True, "zero_stage": 3, "mixed_precision": "no", "grad_acc": "2", "clipping": "1.0", "world_size": 2}
    preflight.check_launch(recipe, ok)
    with pytest.raises(ConfigError, match="training.gradient_accumulation_steps: is 2 but the accelerate config says 4"):
        preflight.check_launch(recipe, {**ok, "grad_acc": "4"})
    with pytest.raises(ConfigError, match="deepspeed.zero_stage: is 3 but the accelerate config says zero_stage 2"):
        preflight.check_launch(recipe, {**ok, "zero_stage": 2})
    with pytest.raises(ConfigError, match="precision: is 'no' but the accelerate config says mixed_precision 'bf16'"):
        preflight.check_launch(recipe, {**ok, "mixed_precision": "bf16"})
