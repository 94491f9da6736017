"""Seconds per image for FLUX.2 [klein] 4B: the bare diffusers pipeline against DiffusersEngine.

Builds the full-size architecture (transformer, VAE and Qwen3-4B text encoder) from its
published hyper-parameters with random weights, directly on the GPU in bfloat16, so nothing
is downloaded; the tokenizer is a byte-level one built in memory. Random weights draw noise,
not pictures, but every matrix has its real shape, so the time per image is the real one.

Both rows make the same image: same prompt, seed, size, steps (4) and guidance (1.0), the
family defaults the engine picks for a distilled klein. The engine row includes what a worker
really pays on top: its thread hop and the PNG encoding.

    python -m bench.diffusers_gpu                 # CUDA GPU, 1024x1024, ~16 GB of GPU memory
    python -m bench.diffusers_gpu --tiny          # toy configs on the CPU: a smoke run in seconds
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as `python bench/diffusers_gpu.py`, Python puts bench/ first on the path, where its
# modules (profile.py, ...) would shadow the standard library's; the repository root is what
# this script needs instead (for `tests.support` and `bench.report`).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

PROMPT = "a lighthouse on a cliff at dusk, waves below, 35mm photograph"
SEED = 0

# FLUX.2 [klein] 4B as published in black-forest-labs/FLUX.2-klein-4B (transformer/, vae/,
# text_encoder/ config.json). joint_attention_dim is three Qwen3 hidden layers stacked: 3 x 2560.
FLUX2_KLEIN_4B: dict[str, dict[str, Any]] = {
    "transformer": {
        "patch_size": 1,
        "in_channels": 128,
        "num_layers": 5,
        "num_single_layers": 20,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 7680,
        "timestep_guidance_channels": 256,
        "mlp_ratio": 3.0,
        "axes_dims_rope": (32, 32, 32, 32),
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": False,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 32,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
        "batch_norm_eps": 1e-4,
        "patch_size": (2, 2),
    },
    # Qwen3-4B.
    "text_encoder": {
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": True,
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="toy configs on the CPU (smoke run, no GPU needed)"
    )
    parser.add_argument(
        "--size", type=int, help="image side in pixels (default 1024; 128 with --tiny)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed images per row (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed images per row first (default 1)"
    )
    args = parser.parse_args()

    try:
        import diffusers
        import torch
    except ImportError:
        print(
            "This benchmark needs the `local` extra: pip install 'imagegate[local]'.",
            file=sys.stderr,
        )
        return 2
    if not args.tiny and not torch.cuda.is_available():
        print(
            "No CUDA device: this benchmark times FLUX.2 [klein] 4B on a GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
            "Run it on a machine with an NVIDIA GPU and the CUDA build of torch, "
            "or pass --tiny for a CPU smoke run with toy configs.",
            file=sys.stderr,
        )
        return 2

    from tests.support.tiny_pipelines import FLUX2_KLEIN_TINY, flux2_klein_pipeline

    from bench.report import Row, print_table
    from imagegate.engines.base import EngineRequest
    from imagegate.engines.diffusers import DiffusersEngine

    # Random weights decode to NaNs now and then; the cast warnings say nothing about speed.
    warnings.filterwarnings("ignore", category=RuntimeWarning)

    if args.tiny:
        configs, device, dtype, label = (
            FLUX2_KLEIN_TINY,
            "cpu",
            torch.float32,
            "tiny FLUX.2 [klein] (toy configs)",
        )
    else:
        configs, device, dtype, label = (
            FLUX2_KLEIN_4B,
            "cuda",
            torch.bfloat16,
            "FLUX.2 [klein] 4B (random weights)",
        )
    started = time.perf_counter()
    pipeline = flux2_klein_pipeline(configs, is_distilled=True, device=device, dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    build_seconds = time.perf_counter() - started

    engine = DiffusersEngine(model=label, pipeline=pipeline, resolution=args.size)
    asyncio.run(engine.start())
    traits = engine.traits
    assert traits is not None and traits.steps is not None and traits.guidance is not None
    side = args.size or traits.side or 1024

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    images: list[Any] = []

    def bare() -> None:
        output = pipeline(
            prompt=PROMPT,
            height=side,
            width=side,
            num_inference_steps=traits.steps,
            guidance_scale=traits.guidance,
            generator=torch.Generator(device=device).manual_seed(SEED),
        )
        synchronize()
        images[:] = output.images

    async def through_engine_async() -> None:
        result = await engine.generate(EngineRequest(prompt=PROMPT, aspect_ratio="1:1", seed=SEED))
        assert result.images[0].data.startswith(b"\x89PNG")

    def through_engine() -> None:
        asyncio.run(through_engine_async())
        synchronize()

    bare_times, engine_times = timed_alternately(bare, through_engine, args.warmup, args.runs)
    png_times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        images[0].save(io.BytesIO(), format="PNG")
        png_times.append(time.perf_counter() - started)
    asyncio.run(engine.close())

    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{label} on {device_name}; torch {torch.__version__}, diffusers {diffusers.__version__}")
    print(
        f"{side}x{side}, {traits.steps} steps, guidance {traits.guidance}, "
        f"{str(dtype).removeprefix('torch.')}; median of {args.runs} runs after {args.warmup} "
        f"warm-up, the two paths taking turns; model built in {build_seconds:.1f} s"
    )
    benchmark = f"diffusers {'tiny' if args.tiny else 'klein 4B'} {side}px"
    print_table(
        [
            Row(
                benchmark,
                "seconds per image",
                imagegate=statistics.median(engine_times),
                baseline=statistics.median(bare_times),
                unit="s",
                note="imagegate: DiffusersEngine.generate, PNG bytes out; baseline: the same "
                "call on the bare diffusers pipeline, PIL image out",
            ),
            Row(
                benchmark,
                "of which PNG encoding",
                imagegate=statistics.median(png_times),
                unit="s",
                note="the engine encodes each image to PNG; the bare pipeline does not",
            ),
        ]
    )
    return 0


def timed_alternately(
    first: Callable[[], None], second: Callable[[], None], warmup: int, runs: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of each, taking turns so that clock boosts and thermal drift hit both alike."""
    for _ in range(warmup):
        first()
        second()
    first_times: list[float] = []
    second_times: list[float] = []
    for _ in range(runs):
        for run, times in ((first, first_times), (second, second_times)):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    return first_times, second_times


if __name__ == "__main__":
    sys.exit(main())
