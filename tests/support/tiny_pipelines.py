"""Random-weight diffusers pipelines built from configs: nothing is downloaded.

The diffusers engine tests save these to a temp directory and load them back through the
real engine; `bench/diffusers_gpu.py` builds the full-size FLUX.2 [klein] 4B the same way.
Needs the `local` extra (torch, diffusers, transformers).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

CHATML_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The shape of Qwen3's chat template, which Flux2KleinPipeline applies to every prompt
# (with enable_thinking=False) before encoding it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer with one token per byte and no merges.

    Any prompt tokenizes (as UTF-8 bytes) with a 259-entry vocabulary built right here, so
    neither Qwen's nor CLIP's real vocabulary has to be downloaded. The text encoders only
    see token ids, so a small vocabulary changes nothing about the shapes downstream.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    for token in CHATML_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(CHATML_SPECIAL_TOKENS)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


TOKENIZER_VOCAB_SIZE = 256 + len(CHATML_SPECIAL_TOKENS)

# FLUX.2 [klein] at toy size. The text encoder keeps 28 layers because the pipeline reads
# hidden states 9, 18 and 27 by default; joint_attention_dim is those three layers stacked
# (3 x hidden_size), as in the real model (3 x 2560 = 7680).
FLUX2_KLEIN_TINY: dict[str, dict[str, Any]] = {
    "transformer": {
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 3 * 16,
        "timestep_guidance_channels": 256,
        "axes_dims_rope": (4, 4, 4, 4),
        "guidance_embeds": False,
    },
    "vae": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",),
        "up_block_types": ("UpDecoderBlock2D",),
        "block_out_channels": (4,),
        "layers_per_block": 1,
        "latent_channels": 1,
        "norm_num_groups": 1,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    "text_encoder": {
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_hidden_layers": 28,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
    },
}


def flux2_klein_pipeline(
    configs: dict[str, dict[str, Any]],
    *,
    is_distilled: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Flux2KleinPipeline:
    """A Flux2KleinPipeline with random weights, created directly on `device` in `dtype`.

    Creating the modules under the target device and default dtype (instead of building in
    float32 on the CPU and moving) is what keeps the full 4B + 4B-parameter build fast and
    within memory.
    """
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(seed)
            transformer = Flux2Transformer2DModel(**configs["transformer"])
            vae = AutoencoderKLFlux2(**configs["vae"])
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**configs["text_encoder"]))
    finally:
        torch.set_default_dtype(previous_dtype)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_tokenizer(model_max_length=512),
        transformer=transformer,
        is_distilled=is_distilled,
    )


def stable_diffusion_components(seed: int = 0) -> dict[str, Any]:
    """Components shared by the Stable Diffusion family (text-to-image, img2img, ...) at toy size."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=TOKENIZER_VOCAB_SIZE,
            hidden_size=16,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=16,
        )
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": byte_level_tokenizer(model_max_length=77),
        "scheduler": DDIMScheduler(steps_offset=1, clip_sample=False),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
