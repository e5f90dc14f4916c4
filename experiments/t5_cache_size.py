"""Text-cache bytes per caption at real FLUX.1 geometry (T5-XXL: 4096 features, CLIP-L pooled: 768, bf16).

    python experiments/t5_cache_size.py

Writes real cache entries with `simpletuner_pl.data.encode.stored_sequence` and `TensorCache.save` (random values:
the size depends on the shapes only) and reports each file's size on disk and the total for 10k captions:
  * `t5_padding=unmodified` (the default, what FluxPipeline.encode_prompt feeds the transformer): the whole
    `t5_max_length` sequence, since T5's outputs at the pad tokens are not zero and differ per caption;
  * `t5_padding=zero`: the pad outputs are exactly zero, so the entry keeps only the caption's real tokens.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

T5_FEATURES, POOLED = 4096, 768
CAPTIONS = 10_000


def entry_bytes(cache, key: str, max_length: int, real_tokens: int, zero: bool) -> int:
    import torch

    from simpletuner_pl.data.encode import stored_sequence

    sequence = torch.randn(max_length, T5_FEATURES, dtype=torch.bfloat16)
    if zero:
        sequence[real_tokens:] = 0
    tensors = {"prompt_embeds": stored_sequence(sequence, real_tokens).clone(),
               "pooled_prompt_embeds": torch.randn(POOLED, dtype=torch.bfloat16),
               "length": torch.tensor(real_tokens)}
    cache.save(key, tensors)
    return cache.path(key).stat().st_size


def main() -> dict:
    from simpletuner_pl.data.cache import TensorCache

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = TensorCache(Path(tmp))
        print(f"{'t5_padding':<11} {'t5_max_length':>13} {'real tokens':>11} {'bytes/caption':>14} "
              f"{'10k captions':>13}")
        for zero, cases in ((False, [(512, 40), (256, 40), (128, 40), (77, 40)]),
                            (True, [(512, 20), (512, 40), (512, 77), (512, 150), (512, 512)])):
            for max_length, real in cases:
                size = entry_bytes(cache, f"{zero}{max_length}{real}".ljust(8, "0"), max_length, real, zero)
                mode = "zero" if zero else "unmodified"
                results[(mode, max_length, real)] = size
                print(f"{mode:<11} {max_length:>13} {real:>11} {size:>14,} {size * CAPTIONS / 2**30:>10.2f} GiB")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
