"""Datasets: load the train (and eval) split, turn rows into text, tokenize.

Sources (``data.dataset_name``): a built-in (``hpctune:tiny-chat``); a local file (jsonl,
json, parquet, csv: its rows are the train split); a local folder (a ``save_to_disk``
folder, a folder per split saved with ``save_to_disk``, or files named after the splits,
e.g. ``train.jsonl`` / ``test-00000.parquet``); otherwise a hub dataset name.

Text: the chat ``messages`` column rendered with the tokenizer's chat template when a chat
template format is chosen (or when the text column is absent and the tokenizer has a
template), else the text column (``data.dataset_text_field``). Tokenization follows PEFT's
SFT example: ``add_special_tokens`` lets the tokenizer add BOS/EOS, ``append_concat_token``
appends EOS to each sample (the separator between packed samples). TRL then builds labels,
truncates to ``max_seq_len`` or packs.
"""

from __future__ import annotations

from pathlib import Path

from hpctune.errors import ConfigError
from hpctune.train import preflight, tiny

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FIELD = "data.dataset_name"


def split_names(recipe) -> tuple[str, str | None]:
    parts = [s.strip() for s in recipe.data.splits.split(",") if s.strip()]
    if not parts or len(parts) > 2:
        raise ConfigError(recipe.source, "data.splits", f"{recipe.data.splits!r}: give 'TRAIN' or 'TRAIN,EVAL' (e.g. train,test)")
    return parts[0], (parts[1] if len(parts) > 1 else None)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


def _split_files(folder: Path, split: str) -> list[Path]:
    found = []
    for ext in _BUILDERS:
        found += sorted(folder.glob(f"{split}{ext}")) + sorted(folder.glob(f"{split}[-_.]*{ext}"))
        found += sorted(folder.glob(f"data/{split}{ext}")) + sorted(folder.glob(f"data/{split}[-_.]*{ext}"))
    return list(dict.fromkeys(found))


def _available(folder: Path) -> list[str]:
    names = set()
    for p in list(folder.glob("*")) + list(folder.glob("data/*")):
        if p.suffix in _BUILDERS:
            names.add(p.name.split(".")[0].split("-")[0])
        elif p.is_dir() and (p / "state.json").is_file():
            names.add(p.name)
    return sorted(names)


def load_split(recipe, split: str):
    """One split as a ``datasets.Dataset``, or None when the source has no such split."""
    import datasets

    name = recipe.data.dataset_name
    if tiny.is_builtin(name):
        try:
            name = tiny.resolve(name)
        except ConfigError as e:
            raise ConfigError(recipe.source, FIELD, e.message) from None
    local = preflight.local_path(recipe, name)
    try:
        if local is not None and local.is_file():
            builder = _BUILDERS.get(local.suffix)
            if builder is None:
                raise ConfigError(recipe.source, FIELD, f"{local}: unknown file type {local.suffix!r} (use jsonl, json, parquet or csv)")
            if split != split_names(recipe)[0]:
                return None  # a single file is the train split only
            return datasets.load_dataset(builder, data_files=str(local), split="train")
        if local is not None:
            if (local / "dataset_dict.json").is_file():
                dd = datasets.load_from_disk(str(local))
                return dd[split] if split in dd else None
            if (local / "state.json").is_file():
                return datasets.load_from_disk(str(local)) if split == split_names(recipe)[0] else None
            if (local / split / "state.json").is_file():
                return datasets.load_from_disk(str(local / split))
            files = _split_files(local, split)
            if not files:
                return None
            builder = _BUILDERS[files[0].suffix]
            return datasets.load_dataset(builder, data_files={split: [str(f) for f in files]}, split=split)
        if preflight._looks_like_path(name):
            raise ConfigError(recipe.source, FIELD, f"{name}: no such file or folder")
        try:
            return datasets.load_dataset(name, split=split)
        except ValueError as e:
            if "split" in str(e).lower() or "Unknown split" in str(e):
                return None
            raise
    except ConfigError:
        raise
    except Exception as e:  # hub unreachable, unknown dataset, unreadable file ...
        raise ConfigError(recipe.source, FIELD, f"{name}: cannot load split {split!r}: {_first_line(e)}") from None


def load(recipe):
    """(train, eval or None) raw datasets; a missing eval split is an error unless eval is off."""
    train_split, eval_split = split_names(recipe)
    train = load_split(recipe, train_split)
    if train is None:
        raise ConfigError(recipe.source, "data.splits", f"split {train_split!r} not found in {recipe.data.dataset_name}{_have(recipe)}")
    evald = None
    if eval_split:
        evald = load_split(recipe, eval_split)
        if evald is None:
            raise ConfigError(recipe.source, "data.splits",
                              f"eval split {eval_split!r} not found in {recipe.data.dataset_name}{_have(recipe)}; "
                              f"set data.splits: {train_split} to train without evaluation")
        if len(evald) == 0:
            raise ConfigError(recipe.source, "data.splits", f"eval split {eval_split!r} of {recipe.data.dataset_name} is empty")
    return train, evald


def _have(recipe) -> str:
    local = preflight.local_path(recipe, tiny.resolve(recipe.data.dataset_name) if tiny.is_builtin(recipe.data.dataset_name) else recipe.data.dataset_name)
    if local is not None and local.is_dir():
        names = _available(local)
        return f" (found: {', '.join(names)})" if names else ""
    return ""


def text_source(recipe, columns: list[str], tokenizer) -> tuple[str, str]:
    """("messages", column) to render with the chat template, or ("text", column)."""
    d = recipe.data
    has_msgs = d.dataset_messages_field in columns
    has_text = d.dataset_text_field in columns
    if has_msgs and (d.chat_template_format != "none" or not has_text):
        if getattr(tokenizer, "chat_template", None):
            return "messages", d.dataset_messages_field
        if not has_text:
            raise ConfigError(recipe.source, "data.chat_template_format",
                              f"the dataset has chat messages ({d.dataset_messages_field!r}) but the tokenizer has no chat template: set chat_template_format chatml or zephyr")
    if has_text:
        return "text", d.dataset_text_field
    raise ConfigError(recipe.source, "data.dataset_text_field",
                      f"column {d.dataset_text_field!r} not in dataset {d.dataset_name} (columns: {', '.join(columns)}); "
                      f"set data.dataset_text_field to the column holding the text"
                      + (" or data.dataset_messages_field to the chat column" if not has_msgs else ""))


def tokenize(recipe, ds, tokenizer, source: tuple[str, str]):
    """A dataset with one ``input_ids`` column (what TRL takes as already processed)."""
    kind, column = source
    add_special = recipe.data.add_special_tokens
    eos = tokenizer.eos_token_id if recipe.data.append_concat_token else None

    def fn(batch):
        if kind == "messages":
            texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in batch[column]]
        else:
            texts = [t if isinstance(t, str) else "" for t in batch[column]]
        ids = tokenizer(texts, add_special_tokens=add_special)["input_ids"]
        if eos is not None:
            ids = [x if x and x[-1] == eos else x + [eos] for x in ids]
        return {"input_ids": ids}

    out = ds.map(fn, batched=True, remove_columns=ds.column_names, desc="hpctune: tokenizing")
    return out.filter(lambda x: len(x["input_ids"]) > 0)
