"""Datasets, text and tokenizers: every source format, chat templates, packing, resizing.

Proves: local jsonl/json/csv/parquet files and folders, save_to_disk folders (a DatasetDict,
a Dataset, a folder per split) load as the right splits; chat messages are rendered with
the template, a text column is used as is; add_special_tokens and append_concat_token do
what PEFT's flags do; a recipe with packing trains; an 8-bit base trains; a model whose tokenizer lacks the chat
format's tokens gets them added, its embeddings resized, the added rows (input and output)
trained apart from each other (GPU-path review D7), and merges with those rows.
"""

from __future__ import annotations

import json

import pytest

from tests import tiny_assets as ta


def _recipe(tmp_path, **overrides):
    from hpctune import recipe as recipe_mod
    return recipe_mod.load(ta.write_recipe(tmp_path, overrides))


def _rows(n, seed=1):
    from hpctune.train import tiny
    return tiny.chat_rows(n, seed)


@pytest.mark.parametrize("layout", ["jsonl-file", "json-file", "csv-file", "parquet-folder", "jsonl-folder",
                                    "disk-dict", "disk-dataset", "disk-per-split"])
def test_local_dataset_layouts(tmp_path, layout):
    import datasets
    from hpctune.train import data
    rows = [{"content": r["content"]} for r in _rows(12)]
    test_rows = rows[:3]
    src = tmp_path / "src"
    src.mkdir()
    splits = "train,test"
    ds_train, ds_test = datasets.Dataset.from_list(rows), datasets.Dataset.from_list(test_rows)
    if layout == "jsonl-file":
        path, splits = src / "all.jsonl", "train"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif layout == "json-file":
        path, splits = src / "all.json", "train"
        path.write_text(json.dumps(rows))
    elif layout == "csv-file":
        path, splits = src / "all.csv", "train"
        ds_train.to_csv(str(path))
    elif layout == "parquet-folder":
        path = src
        (src / "data").mkdir()
        ds_train.to_parquet(str(src / "data" / "train-00000-of-00001.parquet"))
        ds_test.to_parquet(str(src / "data" / "test-00000-of-00001.parquet"))
    elif layout == "jsonl-folder":
        path = src
        ta.write_dataset(src, n_train=12, n_test=3)
    elif layout == "disk-dict":
        path = src / "dd"
        datasets.DatasetDict({"train": ds_train, "test": ds_test}).save_to_disk(str(path))
    elif layout == "disk-dataset":
        path, splits = src / "d", "train"
        ds_train.save_to_disk(str(path))
    else:  # PEFT's fallback: load_from_disk(os.path.join(name, split))
        path = src
        ds_train.save_to_disk(str(src / "train"))
        ds_test.save_to_disk(str(src / "test"))
    recipe = _recipe(tmp_path, **{"data.dataset_name": str(path), "data.splits": splits})
    train, evald = data.load(recipe)
    assert len(train) == 12 and "content" in train.column_names
    assert (evald is None) if splits == "train" else (len(evald) == 3)


def test_single_file_has_no_eval_split(tmp_path):
    from hpctune.errors import ConfigError
    from hpctune.train import data
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"content": r["content"]}) + "\n" for r in _rows(8)))
    recipe = _recipe(tmp_path, **{"data.dataset_name": str(path)})  # splits train,test
    with pytest.raises(ConfigError, match="eval split 'test' not found.*data.splits: train"):
        data.load(recipe)


def test_text_source_and_tokenization_flags(tmp_path):
    import datasets
    from hpctune.train import data, model, preflight, tiny
    recipe = _recipe(tmp_path)  # chatml
    tok = model.load_tokenizer(recipe, preflight.resolve_model(recipe))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>"
    # messages + chatml: rendered with the template; text only: used as is
    assert data.text_source(recipe, ["messages", "content"], tok) == ("messages", "messages")
    assert data.text_source(recipe, ["content"], tok) == ("text", "content")
    plain = _recipe(tmp_path, **{"data.chat_template_format": "none"})
    assert data.text_source(plain, ["messages", "content"], tok) == ("text", "content")
    assert data.text_source(plain, ["messages"], tok) == ("messages", "messages")

    rows = tiny.chat_rows(2, 3)
    ds = datasets.Dataset.from_list(rows)
    ids = data.tokenize(recipe, ds, tok, ("messages", "messages"))["input_ids"]
    same = data.tokenize(recipe, ds, tok, ("text", "content"))["input_ids"]
    assert ids == same  # the template renders exactly the content column
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ids[0][0] != bos
    with_special = _recipe(tmp_path, **{"data.add_special_tokens": True, "data.append_concat_token": True})
    more = data.tokenize(with_special, ds, tok, ("text", "content"))["input_ids"]
    assert all(m[-1] == eos for m in more)
    assert len(more[0]) >= len(ids[0])


def test_packing_trains(tmp_path):
    from hpctune.train import run
    recipe = ta.write_recipe(tmp_path, {"data.packing": True, "data.append_concat_token": True,
                                        "training.max_steps": 3, "training.eval_strategy": "no",
                                        "training.save_strategy": "no", "training.logging_steps": 1})
    assert run.main(recipe) == 0
    m = ta.metrics(tmp_path / "output")
    assert m["status"] == "completed"
    # packed rows are full: 4 rows x 64 tokens per step, no padding
    assert m["tokens_seen"] == 3 * 4 * 64


def test_chat_tokens_added_embeddings_resized_and_merged(tmp_path):
    """Like Llama-2 + chatml: the tokenizer lacks the format's tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from hpctune.train import merge, run, tiny
    base = tmp_path / "base"
    base.mkdir()
    tiny.build_model(base, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    recipe = ta.write_recipe(tmp_path / "run", {"model.model_name_or_path": str(base),
                                                "data.chat_template_format": "zephyr",
                                                "training.max_steps": 3, "training.eval_strategy": "no",
                                                "training.save_strategy": "no"})
    assert run.main(recipe) == 0
    out = tmp_path / "run" / "output"
    m = ta.metrics(out)
    assert m["status"] == "completed"
    assert m["model"]["added_tokens"] == {"added": 3, "input_rows_trained": True, "output_rows_trained": True}
    tensors = ta.adapter(out)
    table = tensors["base_model.model.model.embed_tokens.token_adapter.base_layer.weight"]
    assert table.shape[0] == 392  # 384 + <|user|>, <|assistant|>, <|system|>, rounded up to a multiple of 8
    rows = {where: tensors[f"base_model.model.{where}.token_adapter.trainable_tokens_delta"]
            for where in ("model.embed_tokens", "lm_head")}
    for where, r in rows.items():  # they started as the same mean row; training set them apart
        assert r.shape == (3, 64) and float(r.std(0).max()) > 1e-3, where

    info = merge.merge(tmp_path / "run", tmp_path / "merged")
    assert info["base"] == str(base)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    assert merged.get_input_embeddings().weight.shape[0] == 392
    assert torch.allclose(merged.get_input_embeddings().weight[384:387], rows["model.embed_tokens"].float())
    assert torch.allclose(merged.get_output_embeddings().weight[384:387], rows["lm_head"].float())


def test_8bit_base_trains(tmp_path):
    from hpctune.train import run
    recipe = ta.write_recipe(tmp_path, {"method.type": "qlora", "method.quant_bits": 8, "training.max_steps": 2,
                                        "training.eval_strategy": "no", "training.save_strategy": "no"})
    assert run.main(recipe) == 0
    m = ta.metrics(tmp_path / "output")
    assert m["status"] == "completed" and m["model"]["quantized_linear_layers"] == 14
    assert "int8" in m["model"]["dtypes"]
