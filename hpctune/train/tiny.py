"""Built-in tiny assets, built locally on first use (no hub): a model, a tokenizer, a dataset.

- ``hpctune:tiny-llama``: a BPE tokenizer trained with ``tokenizers`` on the tiny corpus,
  wrapped in ``PreTrainedTokenizerFast`` with a chatml chat template and the special tokens
  of the chatml and zephyr formats (so choosing either adds no token), plus a LlamaConfig
  model (hidden 64, 2 layers, 4 heads, 2 KV heads) saved with ``save_pretrained``.
- ``hpctune:tiny-chat``: a synthetic chat dataset, ``train.jsonl`` and ``test.jsonl``, each
  row with a ``messages`` column and a ``content`` column (the chatml rendering). The
  answers follow fixed rules, so the loss falls clearly within 20 steps.

Everything is deterministic (fixed seeds) and lands in ``${HPCTUNE_CACHE:-~/.cache/hpctune}
/tiny/``. Each asset is built in a temporary folder and renamed into place, so processes
that start together never see a half-written folder: the loser of the race deletes its
copy and uses the winner's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PREFIX = "hpctune:"
TINY_MODEL = "hpctune:tiny-llama"
TINY_DATASET = "hpctune:tiny-chat"
TINY_BART = "hpctune:tiny-bart"
TINY_COMPLAINTS = "hpctune:tiny-complaints"
# per-asset bumps (bart v2: taught the label format; complaints v2: laid out as RAFT's parquet export)
_ASSET_VERSION = {"hpctune:tiny-bart": "v2", "hpctune:tiny-complaints": "v2"}
_VERSION = "v1"  # bump when a builder changes, so old caches are not reused

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% if loop.last and add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
    "{% endfor %}"
)
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<pad>",
    "<|im_start|>", "<|im_end|>", "<|im_start|>user", "<|im_start|>assistant", "<|im_start|>system",
    "<|user|>", "<|assistant|>", "<|system|>",
]

_FRUITS = {"apple": "red", "banana": "yellow", "lime": "green", "plum": "purple", "orange": "orange",
           "cherry": "red", "grape": "green", "lemon": "yellow", "kiwi": "brown", "peach": "pink"}
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve"]
_ANIMALS = {"cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "sheep": "baa", "owl": "hoot"}


def cache_root() -> Path:
    return Path(os.environ.get("HPCTUNE_CACHE") or Path.home() / ".cache" / "hpctune") / "tiny"


def is_builtin(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def resolve(name: str) -> str:
    """The local folder of a built-in asset (built on first use); other names unchanged."""
    if not is_builtin(name):
        return name
    builders: dict[str, Callable[[Path], None]] = {TINY_MODEL: build_model, TINY_DATASET: build_dataset,
                                                   TINY_BART: build_bart, TINY_COMPLAINTS: build_complaints}
    if name not in builders:
        from hpctune.errors import ConfigError
        raise ConfigError("", name, f"unknown built-in asset; known: {', '.join(sorted(builders))}")
    target = cache_root() / f"{name[len(PREFIX):]}-{_ASSET_VERSION.get(name, _VERSION)}"
    return str(ensure(target, builders[name]))


def ensure(target: Path, build: Callable[[Path], None]) -> Path:
    """Build ``target`` with ``build(tmp)`` unless it exists; atomic against concurrent builds."""
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process won the race (target exists and is not empty): use its copy,
            # unless what is there is an unfinished leftover of a killed build.
            if not (target / ".complete").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- data ----------------------------------------------------------------------------------

def conversations(n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` synthetic conversations that follow fixed rules (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            fruit = rng.choice(sorted(_FRUITS))
            q, a = f"what colour is the {fruit}?", f"the {fruit} is {_FRUITS[fruit]}."
        elif kind == 1:
            start = rng.randrange(len(_NUMBERS) - 3)
            q = f"count on from {_NUMBERS[start]}."
            a = " ".join(_NUMBERS[start + 1:start + 4]) + "."
        else:
            animal = rng.choice(sorted(_ANIMALS))
            q, a = f"what does the {animal} say?", f"the {animal} says {_ANIMALS[animal]}."
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def render_chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def chat_rows(n: int, seed: int, columns: tuple[str, ...] = ("messages", "content")) -> list[dict]:
    rows = []
    for conv in conversations(n, seed):
        row = {}
        if "messages" in columns:
            row["messages"] = conv
        if "content" in columns:
            row["content"] = render_chatml(conv)
        for col in columns:
            if col not in ("messages", "content"):
                row[col] = render_chatml(conv)
        rows.append(row)
    return rows


def build_dataset(folder: Path, n_train: int = 480, n_test: int = 48,
                  columns: tuple[str, ...] = ("messages", "content")) -> None:
    """``train.jsonl`` and ``test.jsonl`` in ``folder`` (tests pass other sizes and columns)."""
    write_jsonl(Path(folder) / "train.jsonl", chat_rows(n_train, 1, columns))
    if n_test:
        write_jsonl(Path(folder) / "test.jsonl", chat_rows(n_test, 2, columns))


# --- tokenizer and model ----------------------------------------------------------------------

def build_tokenizer(folder: Path, vocab_size: int = 384, special_tokens: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [render_chatml(c) for c in conversations(2000, 0)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS if special_tokens is None else special_tokens
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=256)
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def build_model(folder: Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                special_tokens: list[str] | None = None) -> None:
    """Tokenizer and a randomly initialised (seed 0) tiny Llama, saved in ``folder``.

    ``special_tokens``: the tokenizer's special tokens (default: those of chatml and zephyr,
    so no format adds any; tests pass fewer to exercise embedding resizing).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(folder, special_tokens=special_tokens)
    vocab = len(tok)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        # A wider init than the default 0.02 lets a LoRA on the attention/MLP layers move the
        # random model's predictions: the loss falls from ~6.3 to ~3 in 30 steps at lr 1e-2.
        initializer_range=0.1,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))


# --- seq2seq: a tiny BART and a text -> label set (the twitter_complaints workload) ----------

COMPLAINT_LABELS = ("complaint", "no complaint")
_BAD = ["broken", "refund", "worst", "delayed", "rude", "terrible", "lost", "crashed"]
_GOOD = ["thanks", "love", "great", "awesome", "happy", "best", "fast", "kind"]
_THINGS = ["flight", "order", "phone", "parcel", "app", "bill", "seat", "router", "delivery", "support"]
_WHO = ["@airline", "@shop", "@telco", "@bank", "@courier"]
BART_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]


def complaint_rows(n: int, seed: int) -> list[dict]:
    """Tweets whose label follows one keyword: a complaint word or a praise word (balanced)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        bad = i % 2 == 0
        word = rng.choice(_BAD if bad else _GOOD)
        who, thing = rng.choice(_WHO), rng.choice(_THINGS)
        pattern = rng.randrange(3)
        text = (f"{who} my {thing} {word}" if pattern == 0 else
                f"{word} {thing} today {who}" if pattern == 1 else f"{who} the {thing} was {word} again")
        rows.append({"Tweet text": text, "ID": i, "label": COMPLAINT_LABELS[0 if bad else 1]})
    rng.shuffle(rows)
    return rows


# RAFT's twitter_complaints label feature: a ClassLabel whose class 0 marks the hidden test labels.
RAFT_CLASSES = ("Unlabeled", "complaint", "no complaint")


def build_complaints(folder: Path, n_train: int = 96, n_test: int = 24) -> None:
    """A small copy of ``ought/raft``'s ``twitter_complaints`` as the hub's parquet export
    lays it out (``twitter_complaints/{train,test}/0000.parquet``): columns ``Tweet text``,
    ``ID``, ``Label`` (a ClassLabel: Unlabeled, complaint, no complaint). As in RAFT the
    test split's labels are hidden (all Unlabeled), so the reference evaluates on train."""
    import datasets

    features = datasets.Features({"Tweet text": datasets.Value("string"), "ID": datasets.Value("int64"),
                                  "Label": datasets.ClassLabel(names=list(RAFT_CLASSES))})
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        if not n:
            continue
        rows = complaint_rows(n, seed)
        labels = [RAFT_CLASSES.index(r["label"]) if split == "train" else 0 for r in rows]
        ds = datasets.Dataset.from_dict({"Tweet text": [r["Tweet text"] for r in rows], "ID": [r["ID"] for r in rows],
                                         "Label": labels}, features=features)
        out = Path(folder) / "twitter_complaints" / split
        out.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(out / "0000.parquet"))


def build_bart(folder: Path, d_model: int = 64, layers: int = 2, heads: int = 4) -> None:
    """A byte-level BPE tokenizer (BART's special tokens and ids) and a random tiny BART (seed 0)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    corpus = [f"{r['Tweet text']} {r['label']}" for r in complaint_rows(2000, 0)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=BART_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=128)
    fast.save_pretrained(str(folder))
    config = BartConfig(vocab_size=len(fast), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=heads, decoder_attention_heads=heads,
                        encoder_ffn_dim=d_model * 2, decoder_ffn_dim=d_model * 2, max_position_embeddings=128,
                        init_std=0.1, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                        forced_eos_token_id=2)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config)
    _teach_label_format(model, fast)
    model.save_pretrained(str(folder))


def _teach_label_format(model, tok, steps: int = 120) -> None:
    """Teach the random BART the answer FORMAT only: tweets -> a label drawn at random.

    Afterwards it answers "complaint" or "no complaint" (then EOS) but its answer does not
    depend on the tweet (accuracy at chance); fine-tuning must learn the keyword rule.
    """
    import torch
    rng = random.Random(3)
    rows = complaint_rows(512, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = rng.sample(rows, 32)
        enc = tok([r["Tweet text"] for r in batch], padding=True, return_tensors="pt")
        lab = tok([rng.choice(COMPLAINT_LABELS) for _ in batch], padding=True, return_tensors="pt")["input_ids"]
        lab[lab == tok.pad_token_id] = -100
        loss = model(**enc, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
