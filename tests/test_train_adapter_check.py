"""The empty-adapter guard (ZeRO-3 can silently save an empty adapter: peft#453, DeepSpeed#3620).

Proves: a run whose save produces an empty adapter fails loudly (exit code 1, one line,
metrics.json status "failed"); and the check itself rejects an empty file, a file with no
tensors, zero-sized tensors, missing tensors, all-zero B matrices and NaNs, while passing
the adapter a real run saved.
"""

from __future__ import annotations

import shutil

import pytest

from tests import tiny_assets as ta

OVERRIDES = {"training.max_steps": 4, "training.save_strategy": "no", "training.eval_strategy": "no"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real adapter (4 steps) plus the names the trained model expects."""
    folder = tmp_path_factory.mktemp("adapter")
    recipe = ta.write_recipe(folder, OVERRIDES)
    from hpctune.train import run
    assert run.main(recipe) == 0
    m = ta.metrics(folder / "output")
    assert m["status"] == "completed" and m["adapter"]["tensors"] == 28
    expected = sorted(ta.adapter(folder / "output"))
    return folder / "output", expected


def test_run_fails_loudly_when_the_saved_adapter_is_empty(tmp_path, monkeypatch, capsys):
    """As if ZeRO-3 had saved without gathering: the save writes an adapter with no tensors."""
    from safetensors.torch import save_file
    from trl import SFTTrainer

    real_save = SFTTrainer.save_model

    def empty_save(self, output_dir=None, _internal_call=False):
        real_save(self, output_dir, _internal_call)
        if not _internal_call:  # the final save, not a checkpoint
            save_file({}, str(self.args.output_dir + "/adapter_model.safetensors"))

    monkeypatch.setattr(SFTTrainer, "save_model", empty_save)
    recipe = ta.write_recipe(tmp_path, OVERRIDES)
    from hpctune.train.__main__ import main
    code = main([str(recipe)])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "holds no tensor" in lines[0] and "zero3_save_16bit_model" in lines[0]
    m = ta.metrics(tmp_path / "output")
    assert m["status"] == "failed" and "holds no tensor" in m["error"]


def _variant(trained, tmp_path, mutate):
    out, expected = trained
    copy = tmp_path / "adapter"
    shutil.copytree(out, copy)
    tensors = ta.adapter(copy)
    from safetensors.torch import save_file
    mutated = mutate(tensors)
    if mutated is not None:
        save_file(mutated, str(copy / "adapter_model.safetensors"))
    return copy, expected


def test_check_passes_a_real_adapter(trained):
    from hpctune.train import adapter_check
    out, expected = trained
    summary = adapter_check.verify(out, expected)
    assert summary["tensors"] == 28 and summary["r"] == 8


def test_check_rejects_an_empty_file(trained, tmp_path):
    from hpctune.train import adapter_check
    copy, expected = _variant(trained, tmp_path, lambda t: None)
    (copy / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(adapter_check.AdapterCheckError, match="empty file"):
        adapter_check.verify(copy, expected)


def test_check_rejects_zero_sized_tensors(trained, tmp_path):
    import torch
    from hpctune.train import adapter_check
    # what a partitioned ZeRO-3 parameter looks like when saved without gathering
    copy, expected = _variant(trained, tmp_path, lambda t: {k: torch.empty(0, dtype=v.dtype) for k, v in t.items()})
    with pytest.raises(adapter_check.AdapterCheckError, match=r"is empty \(shape \(0,\)\)"):
        adapter_check.verify(copy, expected)


def test_check_rejects_missing_tensors(trained, tmp_path):
    from hpctune.train import adapter_check
    copy, expected = _variant(trained, tmp_path, lambda t: dict(list(t.items())[:10]))
    with pytest.raises(adapter_check.AdapterCheckError, match="18 of 28 expected tensors are missing"):
        adapter_check.verify(copy, expected)


def test_check_rejects_all_zero_b(trained, tmp_path):
    import torch
    from hpctune.train import adapter_check
    copy, expected = _variant(trained, tmp_path, lambda t: {k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in t.items()})
    with pytest.raises(adapter_check.AdapterCheckError, match="every lora_B is zero"):
        adapter_check.verify(copy, expected)


def test_check_rejects_nan(trained, tmp_path):
    import torch
    from hpctune.train import adapter_check

    def poison(t):
        k = next(iter(t))
        t[k] = torch.full_like(t[k], float("nan"))
        return t
    copy, expected = _variant(trained, tmp_path, poison)
    with pytest.raises(adapter_check.AdapterCheckError, match="NaN"):
        adapter_check.verify(copy, expected)
