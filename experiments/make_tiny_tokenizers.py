"""Regenerate the vendored tiny tokenizers in ``simpletuner_pl/assets/tiny_tokenizers/``.

Why they are vendored: tests, CI and the demo must run with no Hugging Face hub
access (``HF_HUB_OFFLINE=1``), and no installed package ships a CLIP or T5
tokenizer that ``transformers`` can load offline. The tiny random-init Flux
pipeline (``simpletuner_pl.models.tiny``) therefore loads these small tokenizers
from the package. They are committed rather than built at import time, so they
need neither open_clip nor a tokenizer trainer at run time.

* ``clip/``: the real CLIP BPE (open_clip's ``bpe_simple_vocab_16e6.txt.gz``,
  MIT) cut to its first 2000 merges, giving 2514 tokens. Ids of the kept tokens
  equal real CLIP ids; bos/eos are 2512/2513 instead of 49406/49407.
* ``t5/``: a ``tokenizers`` Unigram model trained on a generated English
  caption corpus, wrapped as ``T5Tokenizer(vocab=..., extra_ids=0)`` with
  ``<pad>`` = 0, ``</s>`` = 1 and ``<unk>`` = 2 as in real T5.

The output is deterministic: the corpus comes from a fixed seed, training runs
on one thread, and the scores are rounded. Needs ``open_clip_torch`` installed
(only its BPE data file is read; open_clip is not imported).

Usage: ``python experiments/make_tiny_tokenizers.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import string
import tempfile
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # single-threaded Unigram EM -> bit-identical scores
os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_CLIP_MERGES = 2000
T5_VOCAB_SIZE = 384
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "simpletuner_pl" / "assets" / "tiny_tokenizers"


def bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2 byte -> printable unicode table, in vocab order (256 chars)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_clip(out: Path, n_merges: int = N_CLIP_MERGES) -> None:
    from transformers import CLIPTokenizer

    pkg = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    with gzip.open(Path(pkg) / "bpe_simple_vocab_16e6.txt.gz") as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + n_merges]
    base = bytes_to_unicode()
    vocab = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_json, merges_txt = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_json.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # Positional paths on purpose: vocab_file=/merges_file= kwargs are silently ignored in transformers 5.
        tok = CLIPTokenizer(str(vocab_json), str(merges_txt), model_max_length=77)
    assert len(tok) == len(vocab), (len(tok), len(vocab))
    tok.save_pretrained(out)


SUBJECTS = ["cat", "dog", "woman", "man", "girl", "boy", "astronaut", "robot", "horse", "bird", "car", "bicycle", "house", "tree", "flower", "mountain", "river", "city", "street", "bridge", "castle", "boat", "ship", "rocket", "galaxy", "planet", "star", "moon", "sun", "cup", "coffee", "table", "chair", "book", "lamp", "window", "door", "garden", "forest", "beach", "ocean", "lake", "field", "road", "train", "plane", "helmet", "flag", "portrait", "face", "child", "kitten", "puppy", "fox", "owl"]
ADJECTIVES = ["red", "orange", "yellow", "green", "blue", "purple", "black", "white", "brown", "gray", "golden", "silver", "small", "large", "tall", "old", "young", "happy", "smiling", "bright", "dark", "colorful", "wooden", "metal", "glass", "shiny", "soft", "sharp", "blurry", "detailed", "beautiful", "quiet", "busy", "ancient", "modern", "tiny", "huge", "warm", "cold"]
STYLES = ["photo", "painting", "drawing", "sketch", "illustration", "render", "picture", "close-up", "portrait", "watercolor"]
PLACES = """in a park|on a table|at night|at sunset|in the snow|under the stars|on the street|in a studio|by the sea|
in front of a flag|on a launch pad|in deep space|on a wooden table|in the rain|in a garden""".replace("\n", "").split("|")


def caption_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic English caption-like sentences, plus every printable ASCII char once."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        s = f"a {rng.choice(STYLES)} of a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(PLACES)}"
        if rng.random() < 0.3:
            s += f", with a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)}"
        if rng.random() < 0.2:
            s = s[0].upper() + s[1:] + "."
        if rng.random() < 0.1:
            s += f" {rng.randint(0, 2025)} (ISO {rng.choice([100, 200, 400, 800])}, f/{rng.choice([1.8, 2.8, 5.6])})"
        lines.append(s)
    lines.append(" ".join(string.ascii_letters + string.digits + string.punctuation))
    return lines


def make_t5(out: Path, vocab_size: int = T5_VOCAB_SIZE) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    # Same pre-tokenization as transformers' T5Tokenizer, so trained pieces match what it will see.
    t = Tokenizer(models.Unigram())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(string.printable.strip()),
        show_progress=False,
    )
    t.train_from_iterator(caption_corpus(), trainer=trainer)
    trained = json.loads(t.to_str())["model"]["vocab"]
    assert [p for p, _ in trained[:3]] == ["<pad>", "</s>", "<unk>"], trained[:3]
    # The trainer orders equal-score pieces by hash-map order; sort so the files are reproducible.
    pieces = sorted(((p, round(s, 4)) for p, s in trained[3:]), key=lambda ps: (-ps[1], ps[0]))
    vocab = [(p, 0.0) for p, _ in trained[:3]] + pieces
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    tok.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    make_clip(args.out / "clip")
    make_t5(args.out / "t5")
    for f in sorted(args.out.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:>8}  {f}")


if __name__ == "__main__":
    main()
