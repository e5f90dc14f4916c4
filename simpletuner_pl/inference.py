"""How a validation image is made, as data: the same `InferenceCall` renders it during training (`run`) and writes the
model card's snippet (`snippet`), so the snippet reproduces the image exactly with plain diffusers plus, where a
setting needs it, the two small helpers here (importable from `simpletuner_pl.inference` at inference time).

- `masked_t5_attention`: attention-masked training (`model.attention_masked_training`) never lets a pad token of
  the T5 sequence be attended; within this block the pipeline's transformer gets the same key mask (`key_mask`,
  also what training uses), per pass: the prompt's mask for the conditional pass, the negative prompt's for the
  true-CFG pass. (Cutting the embeddings to the real tokens would be equivalent, but the pipeline refuses a
  negative prompt of another length.)
- `delay_true_cfg`: SimpleTuner starts true CFG at step `validation.no_cfg_until_timestep`; before it the negative
  pass's prediction is replaced by the positive one (so the guided prediction is the positive one).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional


@dataclass
class InferenceCall:
    kwargs: Dict[str, Any]  # literal pipeline arguments (prompt, size, steps, guidance, ...)
    masked: bool = False  # prompt (and negative prompt) passed as T5 embeddings cut to their real tokens
    cfg_delay: int = 0  # true CFG from this step index on
    reference_image: Optional[str] = None  # Kontext: the image to edit, cropped to the output size


def key_mask(text_mask, image_tokens: int):
    """[B, 1, 1, S_txt + S_img] boolean attention mask over [text; image] keys: True for the real text tokens and
    for every image token (diffusers' Flux processors take it as `attention_mask`)."""
    import torch

    images = torch.ones(text_mask.shape[0], image_tokens, dtype=torch.bool, device=text_mask.device)
    return torch.cat([text_mask.bool(), images], dim=1)[:, None, None, :]


@contextlib.contextmanager
def masked_t5_attention(pipe, prompt: str, negative_prompt: Optional[str], max_sequence_length: int
                        ) -> Iterator[None]:
    """Within the block, the transformer attends only the real T5 tokens of the prompt (and, on true-CFG passes,
    of the negative prompt), as in attention-masked training."""
    masks = [pipe.tokenizer_2(text, padding="max_length", max_length=max_sequence_length, truncation=True,
                              return_tensors="pt").attention_mask
             for text in ([prompt] if negative_prompt is None else [prompt, negative_prompt])]
    calls = [0]

    def hook(module, args, kwargs):
        text_mask, calls[0] = masks[calls[0] % len(masks)], calls[0] + 1  # passes alternate: prompt, negative
        hidden = kwargs["hidden_states"]
        mask = key_mask(text_mask.to(hidden.device).expand(hidden.shape[0], -1), hidden.shape[1])
        kwargs["joint_attention_kwargs"] = {**(kwargs.get("joint_attention_kwargs") or {}), "attention_mask": mask}
        return args, kwargs

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def delay_true_cfg(pipe, steps: int) -> Iterator[None]:
    """Within the block, the first `steps` denoising steps of a true-CFG call use the positive prediction only."""
    if steps <= 0:
        yield
        return
    calls: List[Any] = [0, None]  # transformer calls so far, the last positive output

    def hook(module, args, kwargs, output):
        index, calls[0] = calls[0], calls[0] + 1
        if index % 2 == 0:
            calls[1] = output
            return output
        return calls[1] if index // 2 < steps else output

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def reference(path: str, width: int, height: int):
    """Kontext's input image at the output size: upright, resized to cover it and centre-cropped (training crops
    each reference exactly like its target, so reference and output always share a size)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    return ImageOps.fit(upright, (width, height), Image.Resampling.LANCZOS)


def arguments(call: InferenceCall) -> Dict[str, Any]:
    kwargs = dict(call.kwargs)
    if call.reference_image is not None:
        kwargs.update(image=reference(call.reference_image, kwargs["width"], kwargs["height"]), _auto_resize=False)
    return kwargs


def run(pipe, call: InferenceCall, seed: int, **extra):
    """The image of `call` with a fresh CPU generator seeded with `seed` (identical across devices)."""
    import torch

    kwargs = call.kwargs
    masked = (masked_t5_attention(pipe, kwargs["prompt"], kwargs.get("negative_prompt"), kwargs["max_sequence_length"])
              if call.masked else contextlib.nullcontext())
    with masked, delay_true_cfg(pipe, call.cfg_delay):
        return pipe(**arguments(call), generator=torch.Generator("cpu").manual_seed(seed), **extra).images[0]


def snippet(loading: List[str], call: InferenceCall, seed: int) -> str:
    """Python that loads the pipeline (`loading`: the family's lines, ending with `pipe = ...`) and renders `call`."""
    helpers = [name for name, used in (("masked_t5_attention", call.masked), ("delay_true_cfg", call.cfg_delay > 0),
                                       ("reference", call.reference_image is not None)) if used]
    imports = ["import torch", *(line for line in loading if line.startswith(("from ", "import ")))]
    imports += [f"from simpletuner_pl.inference import {', '.join(helpers)}"] if helpers else []
    loading = [line for line in loading if not line.startswith(("from ", "import "))]
    kwargs = call.kwargs
    args = [f"    {k}={v!r}," for k, v in kwargs.items()]
    if call.reference_image is not None:
        args.append(f"    image=reference({call.reference_image!r}, {kwargs['width']}, {kwargs['height']}),")
        args.append("    _auto_resize=False,")
    args.append(f"    generator=torch.Generator(\"cpu\").manual_seed({seed}),")
    body = ["image = pipe(", *args, ").images[0]"]
    blocks = []
    if call.masked:  # the model was trained with masked T5 padding: inference masks it too
        blocks.append(f"masked_t5_attention(pipe, {kwargs['prompt']!r}, {kwargs.get('negative_prompt')!r}, "
                      f"{kwargs['max_sequence_length']!r})")
    if call.cfg_delay > 0:
        blocks.append(f"delay_true_cfg(pipe, steps={call.cfg_delay})")
    if blocks:
        body = [f"with {', '.join(blocks)}:", *("    " + line for line in body)]
    return "```python\n" + "\n".join([*imports, *loading, *body]) + "\n```"
