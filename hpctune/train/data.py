"""Datasets: load the train (and eval) split, turn rows into text, tokenize.

Sources (``data.dataset_name``): a built-in (``hpctune:tiny-chat``); a local file (jsonl,
json, parquet, csv: its rows are the train split); a local folder (a ``save_to_disk``
folder, a folder per split saved with ``save_to_disk``, files named after the splits, e.g.
``train.jsonl`` / ``test-00000.parquet``, or a folder per split as the hub's parquet export
lays them out, ``train/0000.parquet``); otherwise a hub dataset name.
``data.dataset_config`` picks a hub dataset's configuration (``load_dataset(name, config)``)
or, for a local folder, its subfolder of that name (the parquet export's
``twitter_complaints/train/0000.parquet``); ``data.dataset_revision`` pins a hub revision.
A hub dataset that ``hpctune prepare`` put into the Hugging Face cache is read from there as
a local folder (no hub call: offline nodes), its revision or else the hub's parquet export.

Tokenized data: ``tokenize_cached`` keeps the tokenized splits under
``HF_HOME/hpctune-tokenized/KEY`` (KEY: the data source, the tokenizer and every setting
that changes a token), written by ``hpctune prepare`` or by the first attempt's rank 0, and
read by every rank of every later attempt and job.

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
        found += sorted(folder.glob(f"{split}/*{ext}"))  # the hub's parquet export: train/0000.parquet
    return list(dict.fromkeys(found))


def _available(folder: Path) -> list[str]:
    names = set()
    for p in list(folder.glob("*")) + list(folder.glob("data/*")):
        if p.suffix in _BUILDERS:
            names.add(p.name.split(".")[0].split("-")[0])
        elif p.is_dir() and ((p / "state.json").is_file() or any(q.suffix in _BUILDERS for q in p.glob("*"))):
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
    if local is None and not preflight._looks_like_path(name):
        local = cached_snapshot(recipe)
    config = recipe.data.dataset_config
    if local is not None and config:
        if not (local / config).is_dir():
            raise ConfigError(recipe.source, "data.dataset_config",
                              f"{config!r}: no such subfolder in {local} (a local dataset's configuration is its subfolder)")
        local = local / config
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
            return _load_hub(recipe, name, split)
        except ValueError as e:
            if "split" in str(e).lower() or "Unknown split" in str(e):
                return None
            raise
    except ConfigError:
        raise
    except Exception as e:  # hub unreachable, unknown dataset, unreadable file ...
        raise ConfigError(recipe.source, FIELD, f"{name}: cannot load split {split!r}: {_first_line(e)}") from None


def cached_snapshot(recipe) -> Path | None:
    """The prepared copy of a hub dataset in the Hugging Face cache: its revision (default
    main), else the hub's parquet export; only one that holds the configuration asked for."""
    from hpctune import hubcache
    d = recipe.data
    if not hubcache.is_repo_id(d.dataset_name):
        return None
    hub = hubcache.hub_dir()
    for rev in (d.dataset_revision, hubcache.PARQUET_EXPORT) if d.dataset_revision else (None, hubcache.PARQUET_EXPORT):
        snap = hubcache.snapshot(hub, d.dataset_name, rev, "dataset")
        if snap is not None and (not d.dataset_config or (snap / d.dataset_config).is_dir()):
            return snap
    return None


def _load_hub(recipe, name: str, split: str):
    import datasets
    d = recipe.data
    try:
        return datasets.load_dataset(name, d.dataset_config, split=split, revision=d.dataset_revision)
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e) or d.dataset_revision:
            raise
    # A repository that still ships a loading script (datasets >= 4 refuses to run it, e.g.
    # ought/raft): read the hub's own parquet export of it instead, laid out CONFIG/SPLIT/*.parquet.
    files = f"hf://datasets/{name}@refs%2Fconvert%2Fparquet/{d.dataset_config or 'default'}/{split}/*.parquet"
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)


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


# Bump when tokenize() changes what it writes, so older tokenized caches are not reused.
TOKENIZE_VERSION = 1


def tokenized_key(recipe, tokenizer) -> str:
    """Everything a token depends on: the data source (a prepared snapshot's commit), the
    splits and columns, the chat format and special-token settings, and the tokenizer."""
    import hashlib
    import json
    d = recipe.data
    source = cached_snapshot(recipe)
    local = preflight.local_path(recipe, tiny.resolve(d.dataset_name) if tiny.is_builtin(d.dataset_name) else d.dataset_name)
    stamp = None
    if source is None and local is not None:
        stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(local).rglob("*")) if p.is_file()][:2000]
    parts = {
        "v": TOKENIZE_VERSION, "dataset": d.dataset_name, "config": d.dataset_config, "revision": d.dataset_revision,
        "snapshot": str(source) if source else None, "files": stamp, "splits": d.splits,
        "text": d.dataset_text_field, "messages": d.dataset_messages_field, "format": d.chat_template_format,
        "add_special_tokens": d.add_special_tokens, "append_concat_token": d.append_concat_token,
        "tokenizer": [tokenizer.name_or_path, type(tokenizer).__name__, len(tokenizer), getattr(tokenizer, "chat_template", None),
                      tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tokenized_dir(recipe, tokenizer) -> Path | None:
    """Where the tokenized splits are kept; None when the source's content has no identity
    (a hub dataset read from the hub at a moving revision: it may change between jobs)."""
    import re
    from hpctune import hubcache
    d = recipe.data
    known = (cached_snapshot(recipe) is not None or tiny.is_builtin(d.dataset_name)
             or preflight.local_path(recipe, d.dataset_name) is not None
             or bool(d.dataset_revision and re.fullmatch(r"[0-9a-f]{40}", d.dataset_revision)))
    return hubcache.hf_home_dir() / hubcache.TOKENIZED / tokenized_key(recipe, tokenizer) if known else None


def load_tokenized(folder: Path):
    """(train, eval or None) from a tokenized cache folder, or None when there is none."""
    if not (folder / "complete.json").is_file():
        return None
    import datasets
    train = datasets.load_from_disk(str(folder / "train"))
    evald = datasets.load_from_disk(str(folder / "eval")) if (folder / "eval").is_dir() else None
    return train, evald


def save_tokenized(folder: Path, train, evald) -> bool:
    """Write a tokenized cache folder in one step (a temporary folder, then a rename)."""
    import json
    import shutil
    import tempfile
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            train.save_to_disk(str(tmp / "train"))
            if evald is not None:
                evald.save_to_disk(str(tmp / "eval"))
            (tmp / "complete.json").write_text(json.dumps({"train_rows": len(train), "eval_rows": len(evald) if evald is not None else 0}))
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return folder.is_dir()  # another process renamed its copy first; a read-only cache is fine too
    return True


def tokenize_all(recipe, tokenizer, world_size: int = 1):
    """(train, eval or None), tokenized, checked (enough rows for one optimizer step)."""
    train_raw, eval_raw = load(recipe)
    source = text_source(recipe, train_raw.column_names, tokenizer)
    preflight.check_rows(recipe, len(train_raw), world_size, f"the train split of {recipe.data.dataset_name}")
    train_ds = tokenize(recipe, train_raw, tokenizer, source)
    eval_ds = None
    if eval_raw is not None:
        eval_ds = tokenize(recipe, eval_raw, tokenizer, text_source(recipe, eval_raw.column_names, tokenizer))
    return train_ds, eval_ds


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
