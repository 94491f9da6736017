"""The diffusers engine against tiny random-weight pipelines saved to disk: nothing is downloaded.

Three families, each saved once per session and loaded through the real engine from its path:
FLUX.2 [klein] (text-to-image and multi-reference editing), Stable Diffusion img2img (one
reference image) and Stable Diffusion (text only).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegate.engines.base import EngineError, EngineRequest, InputImage
from imagegate.settings import Settings
from tests.support.images import image_bytes

# huggingface_hub reads this once, when it is first imported: set it before anything imports it,
# so that no test can reach the Hub (a missing model must fail from the local cache alone).
os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch", reason="the `local` extra (torch) is not installed")
pytest.importorskip("diffusers", reason="the `local` extra (diffusers) is not installed")
pytest.importorskip("transformers", reason="the `local` extra (transformers) is not installed")

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDPMPipeline,
    DDPMScheduler,
    Flux2KleinPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DModel,
)

from imagegate.engines.diffusers import (  # noqa: E402
    DiffusersEngine,
    inspect_pipeline,
    output_size,
    reference_mode,
)
from tests.support.tiny_pipelines import (  # noqa: E402
    FLUX2_KLEIN_TINY,
    flux2_klein_pipeline,
    stable_diffusion_components,
)

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


def reference(size: tuple[int, int], color: tuple[int, int, int]) -> InputImage:
    return InputImage(
        data=image_bytes("PNG", size, color), mime_type="image/png", width=size[0], height=size[1]
    )


THREE_REFERENCES = [
    reference((96, 64), RED),
    reference((64, 64), GREEN),
    reference((64, 128), BLUE),
]


def png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusers-models")
    dirs = {name: root / name for name in ("klein", "sd", "sd-img2img")}
    flux2_klein_pipeline(FLUX2_KLEIN_TINY, is_distilled=True).save_pretrained(dirs["klein"])
    components = stable_diffusion_components()
    StableDiffusionPipeline(**components).save_pretrained(dirs["sd"])
    StableDiffusionImg2ImgPipeline(**components).save_pretrained(dirs["sd-img2img"])
    return dirs


async def started(**options: Any) -> DiffusersEngine:
    engine = DiffusersEngine(device="cpu", **options)
    await engine.start()
    return engine


@pytest.fixture(scope="module")
async def klein(model_dirs: dict[str, Path]) -> AsyncIterator[DiffusersEngine]:
    # 64 px instead of the tiny model's native 128 keeps every generation in this module fast.
    settings = Settings(
        engine="diffusers",
        diffusers_model=str(model_dirs["klein"]),
        diffusers_device="cpu",
        diffusers_resolution=64,
    )
    engine = DiffusersEngine.from_settings(settings)
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
async def img2img(model_dirs: dict[str, Path]) -> AsyncIterator[DiffusersEngine]:
    engine = await started(model=str(model_dirs["sd-img2img"]), steps=2)
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
async def text_only(model_dirs: dict[str, Path]) -> AsyncIterator[DiffusersEngine]:
    engine = await started(model=str(model_dirs["sd"]), steps=2)
    yield engine
    await engine.close()


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[type], list[dict[str, Any]]]:
    """Record the keyword arguments every call of a pipeline class gets, then run the real call."""

    def spy(pipeline_class: type) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        original = pipeline_class.__call__

        def recording_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(pipeline_class, "__call__", recording_call)
        return calls

    return spy


# --- FLUX.2 [klein]: text-to-image and multi-reference editing ----------------------------------


async def test_text_to_image_is_a_png_of_the_requested_ratio(klein: DiffusersEngine) -> None:
    result = await klein.generate(
        EngineRequest(prompt="a lighthouse at dusk", aspect_ratio="16:9", seed=1)
    )

    assert len(result.images) == 1
    assert result.images[0].mime_type == "image/png"
    # 16:9 at about 64² pixels (IMAGEGATE_DIFFUSERS_RESOLUTION) on the tiny model's 2 px grid.
    assert png(result.images[0].data).size == (86, 48)
    assert result.model == klein.model
    assert result.text is None


async def test_default_size_is_the_models_native_square(model_dirs: dict[str, Path]) -> None:
    engine = await started(model=str(model_dirs["klein"]), steps=1)
    try:
        result = await engine.generate(EngineRequest(prompt="a lighthouse at dusk", seed=1))
    finally:
        await engine.close()

    # default_sample_size 128 x the tiny VAE's scale 1.
    assert png(result.images[0].data).size == (128, 128)


async def test_distilled_klein_runs_at_its_recommended_steps_and_guidance(
    klein: DiffusersEngine, pipeline_calls: Callable[[type], list[dict[str, Any]]]
) -> None:
    calls = pipeline_calls(Flux2KleinPipeline)

    await klein.generate(EngineRequest(prompt="a lighthouse at dusk", seed=1))

    assert len(calls) == 1
    assert calls[0]["num_inference_steps"] == 4
    assert calls[0]["guidance_scale"] == 1.0
    assert "image" not in calls[0]


async def test_settings_override_steps_guidance_and_resolution(
    model_dirs: dict[str, Path], pipeline_calls: Callable[[type], list[dict[str, Any]]]
) -> None:
    engine = await started(model=str(model_dirs["klein"]), steps=2, guidance=2.5, resolution=48)
    calls = pipeline_calls(Flux2KleinPipeline)
    try:
        result = await engine.generate(EngineRequest(prompt="a lighthouse", aspect_ratio="1:1"))
    finally:
        await engine.close()

    assert (calls[0]["num_inference_steps"], calls[0]["guidance_scale"]) == (2, 2.5)
    assert png(result.images[0].data).size == (48, 48)


async def test_three_references_reach_the_pipeline_as_three_images(
    klein: DiffusersEngine,
    pipeline_calls: Callable[[type], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = pipeline_calls(Flux2KleinPipeline)
    pipeline = klein.pipeline
    encoded: list[int] = []
    original_prepare = pipeline.prepare_image_latents

    def counting_prepare(images: list[Any], *args: Any, **kwargs: Any) -> Any:
        encoded.append(len(images))
        return original_prepare(images, *args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_image_latents", counting_prepare)

    result = await klein.generate(
        EngineRequest(prompt="put them together", images=THREE_REFERENCES, seed=3)
    )

    images = calls[0]["image"]
    assert isinstance(images, list)
    assert [image.size for image in images] == [(96, 64), (64, 64), (64, 128)]
    assert [image.getpixel((5, 5)) for image in images] == [RED, GREEN, BLUE]
    # ... and the pipeline really encoded all three as conditioning.
    assert encoded == [3]
    # No ratio asked: the output takes the first reference's (3:2) at the configured area.
    assert png(result.images[0].data).size == (78, 52)
    assert result.text is None


async def test_small_references_are_upscaled_not_refused(
    klein: DiffusersEngine, pipeline_calls: Callable[[type], list[dict[str, Any]]]
) -> None:
    # Flux2KleinPipeline itself refuses references with a side under 64 px.
    calls = pipeline_calls(Flux2KleinPipeline)

    await klein.generate(
        EngineRequest(prompt="bigger", images=[reference((40, 30), RED)], aspect_ratio="1:1")
    )

    assert [image.size for image in calls[0]["image"]] == [(86, 64)]


async def test_same_seed_gives_the_same_bytes(klein: DiffusersEngine) -> None:
    request = EngineRequest(prompt="a red fox in snow", aspect_ratio="4:3", seed=1234)

    first = await klein.generate(request)
    second = await klein.generate(request)
    other = await klein.generate(
        EngineRequest(prompt="a red fox in snow", aspect_ratio="4:3", seed=1235)
    )

    assert first.images[0].data == second.images[0].data
    assert first.images[0].data != other.images[0].data


async def test_generation_runs_off_the_event_loop(
    klein: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Flux2KleinPipeline.__call__

    def slow_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # a long generation, made long on purpose
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Flux2KleinPipeline, "__call__", slow_call)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        await klein.generate(EngineRequest(prompt="a slow one", seed=1))
    finally:
        ticking.cancel()

    # Blocking the loop for the whole call would leave the ticker at 0 or 1.
    assert ticks >= 20


async def test_a_cancelled_generation_stops_at_its_next_step(model_dirs: dict[str, Path]) -> None:
    steps = 200
    engine = await started(model=str(model_dirs["klein"]), steps=steps, resolution=32)
    forward_calls = 0
    first_step = threading.Event()

    def count_forward(module: Any, args: Any, output: Any) -> None:
        nonlocal forward_calls
        forward_calls += 1
        first_step.set()

    handle = engine.pipeline.transformer.register_forward_hook(count_forward)
    try:
        task = asyncio.create_task(engine.generate(EngineRequest(prompt="never mind", seed=1)))
        deadline = time.monotonic() + 30
        while not first_step.is_set():
            assert time.monotonic() < deadline, "the generation never started"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The engine's single thread runs this only once the cancelled run has given it up.
        await engine.generate(EngineRequest(prompt="the next task", seed=2))
    finally:
        handle.remove()
        await engine.close()

    assert steps + 1 <= forward_calls < 2 * steps


async def test_out_of_memory_fails_the_task_frees_memory_and_keeps_the_engine_up(
    klein: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Flux2KleinPipeline.__call__
    attempts = 0

    def out_of_memory_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    emptied: list[bool] = []
    monkeypatch.setattr(Flux2KleinPipeline, "__call__", out_of_memory_once)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    with pytest.raises(EngineError) as failure:
        await klein.generate(EngineRequest(prompt="too big", aspect_ratio="1:1"))

    assert "ran out of" in failure.value.message
    assert "IMAGEGATE_DIFFUSERS_CPU_OFFLOAD" in failure.value.message
    assert not failure.value.retryable
    assert emptied, "the CUDA cache was not emptied"
    after = await klein.generate(EngineRequest(prompt="fits", aspect_ratio="1:1"))
    assert png(after.images[0].data).size == (64, 64)


# --- one-reference and text-only families --------------------------------------------------------


async def test_single_image_pipeline_uses_the_first_reference_and_says_so(
    img2img: DiffusersEngine, pipeline_calls: Callable[[type], list[dict[str, Any]]]
) -> None:
    calls = pipeline_calls(StableDiffusionImg2ImgPipeline)

    result = await img2img.generate(
        EngineRequest(prompt="make it night", images=THREE_REFERENCES, seed=5)
    )

    image = calls[0]["image"]
    assert isinstance(image, Image.Image)
    assert image.getpixel((image.width // 2, image.height // 2)) == RED
    assert result.text == "This model takes one reference image; used the first of 3."
    # img2img renders at its input's size, so the engine fits the reference to the model's
    # area (32 px square) at the first reference's 3:2 ratio.
    assert png(result.images[0].data).size == (40, 26)


async def test_single_image_pipeline_honours_the_requested_ratio(img2img: DiffusersEngine) -> None:
    result = await img2img.generate(
        EngineRequest(
            prompt="make it night", images=THREE_REFERENCES[:1], aspect_ratio="1:1", seed=5
        )
    )

    assert png(result.images[0].data).size == (32, 32)
    assert result.text is None


async def test_edit_only_pipeline_without_a_reference_fails_clearly(
    img2img: DiffusersEngine,
) -> None:
    with pytest.raises(EngineError) as failure:
        await img2img.generate(EngineRequest(prompt="from nothing"))

    assert "edits a reference image" in failure.value.message
    assert img2img.model in failure.value.message


async def test_text_only_pipeline_refuses_references(
    text_only: DiffusersEngine, pipeline_calls: Callable[[type], list[dict[str, Any]]]
) -> None:
    calls = pipeline_calls(StableDiffusionPipeline)

    with pytest.raises(EngineError) as failure:
        await text_only.generate(EngineRequest(prompt="edit this", images=THREE_REFERENCES))

    message = failure.value.message
    assert text_only.model in message
    assert "StableDiffusionPipeline" in message
    assert "text only" in message
    assert "black-forest-labs/FLUX.2-klein-4B" in message
    assert not failure.value.retryable
    assert calls == []


async def test_text_only_pipeline_draws_from_the_prompt(text_only: DiffusersEngine) -> None:
    result = await text_only.generate(EngineRequest(prompt="a boat", aspect_ratio="1:1", seed=9))

    assert png(result.images[0].data).size == (32, 32)


async def test_cpu_offload_on_the_cpu_is_ignored_with_a_warning(
    model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="imagegate.engines.diffusers"):
        engine = await started(model=str(model_dirs["sd"]), steps=2, cpu_offload=True)
    try:
        result = await engine.generate(EngineRequest(prompt="a boat", seed=9))
    finally:
        await engine.close()

    assert "IMAGEGATE_DIFFUSERS_CPU_OFFLOAD has no effect on the CPU" in caplog.text
    assert "offload" not in engine.describe()
    assert png(result.images[0].data).size == (32, 32)


def test_pipeline_traits(
    klein: DiffusersEngine, img2img: DiffusersEngine, text_only: DiffusersEngine
) -> None:
    klein_traits = inspect_pipeline(klein.pipeline)
    assert (klein_traits.references, klein_traits.needs_reference) == ("many", False)
    assert (klein_traits.steps, klein_traits.guidance) == (4, 1.0)
    assert (
        inspect_pipeline(img2img.pipeline).references,
        inspect_pipeline(img2img.pipeline).needs_reference,
    ) == (
        "one",
        True,
    )
    text_traits = inspect_pipeline(text_only.pipeline)
    assert (text_traits.references, text_traits.steps, text_traits.guidance) == ("none", None, None)


def test_klein_base_uses_the_undistilled_defaults() -> None:
    base = flux2_klein_pipeline(FLUX2_KLEIN_TINY, is_distilled=False)

    traits = inspect_pipeline(base)

    assert (traits.steps, traits.guidance) == (50, 4.0)


def test_describe_names_model_class_and_device(klein: DiffusersEngine) -> None:
    line = klein.describe()

    assert klein.model in line
    assert "Flux2KleinPipeline" in line
    assert "on cpu" in line
    assert "float32" in line
    assert "4 steps" in line


@pytest.mark.parametrize(
    ("pipeline_name", "mode"),
    [
        ("Flux2KleinPipeline", "many"),
        ("Flux2Pipeline", "many"),
        ("QwenImageEditPlusPipeline", "many"),
        ("QwenImageEditPipeline", "one"),
        ("FluxKontextPipeline", "one"),
        ("StableDiffusionInstructPix2PixPipeline", "one"),
        ("StableDiffusionXLImg2ImgPipeline", "one"),
        ("FluxPipeline", "none"),
        ("StableDiffusion3Pipeline", "none"),
        ("QwenImagePipeline", "none"),
    ],
)
def test_reference_mode_of_diffusers_pipelines(pipeline_name: str, mode: str) -> None:
    # PipelineImageInput (img2img, Kontext, Qwen edit) admits lists too, but as a batch:
    # only an explicit list of PIL images, or a known multi-reference class, means "many".
    assert reference_mode(getattr(diffusers, pipeline_name)) == mode


def test_inpainting_pipelines_are_refused() -> None:
    pipeline = StableDiffusionInpaintPipeline(**stable_diffusion_components())

    with pytest.raises(EngineError, match="needs a mask"):
        inspect_pipeline(pipeline)


async def test_a_pipeline_without_a_prompt_is_refused_at_start(tmp_path: Path) -> None:
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    engine = DiffusersEngine(model=str(tmp_path), device="cpu")

    with pytest.raises(EngineError) as failure:
        await engine.start()

    assert f"IMAGEGATE_DIFFUSERS_MODEL={tmp_path}" in failure.value.message
    assert "DDPMPipeline takes no prompt" in failure.value.message


@pytest.mark.parametrize("ratio", ["1:1", "16:9", "9:16", "4:3", "3:2", "21:9", "1:3"])
def test_full_size_klein_sizes_are_on_its_16_px_grid_at_about_a_megapixel(ratio: str) -> None:
    width, height = output_size(ratio, 1024, 16)

    assert width % 16 == 0 and height % 16 == 0
    assert 0.95 < width * height / 1024**2 < 1.05
    numerator, denominator = (int(part) for part in ratio.split(":"))
    assert abs(width / height - numerator / denominator) / (numerator / denominator) < 0.05


# --- loading failures ----------------------------------------------------------------------------


async def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    engine = DiffusersEngine(model=str(missing), device="cpu")

    with pytest.raises(EngineError) as failure:
        await engine.start()

    assert str(missing) in failure.value.message
    assert "no such directory" in failure.value.message
    assert engine.describe().endswith("not loaded yet)")


async def test_directory_that_is_not_a_pipeline_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not really")
    engine = DiffusersEngine(model=str(tmp_path), device="cpu")

    with pytest.raises(EngineError) as failure:
        await engine.start()

    assert "model_index.json" in failure.value.message


async def test_model_neither_cached_nor_downloadable_says_how_to_fix_it() -> None:
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "this test must not reach the Hub"
    engine = DiffusersEngine(model="imagegate-tests/no-such-model", device="cpu")

    with pytest.raises(EngineError) as failure:
        await engine.start()

    message = failure.value.message
    assert "'imagegate-tests/no-such-model'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "HF_HOME" in message
    assert "local directory" in message


def test_bad_device_and_dtype_settings_name_the_setting() -> None:
    with pytest.raises(EngineError, match="IMAGEGATE_DIFFUSERS_DEVICE='gpu'"):
        DiffusersEngine(device="gpu")
    with pytest.raises(EngineError, match="IMAGEGATE_DIFFUSERS_DTYPE='int8'"):
        DiffusersEngine(dtype="int8")


async def test_cuda_requested_without_cuda_fails_at_start(model_dirs: dict[str, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    engine = DiffusersEngine(model=str(model_dirs["klein"]), device="cuda")

    with pytest.raises(EngineError, match="sees no CUDA device"):
        await engine.start()


def test_without_the_local_extra_the_error_says_what_to_install() -> None:
    # A fresh interpreter where torch and friends cannot be imported, as on an install
    # without the extra; importing the engine module must still work.
    script = (
        "import sys\n"
        "for name in ('torch', 'diffusers', 'transformers', 'accelerate'):\n"
        "    sys.modules[name] = None\n"
        "import imagegate.engines.diffusers\n"
        "from imagegate.engines import build_engine\n"
        "from imagegate.engines.base import EngineError\n"
        "from imagegate.settings import Settings\n"
        "try:\n"
        "    build_engine(Settings(engine='diffusers'))\n"
        "except EngineError as exc:\n"
        "    print(exc.message)\n"
        "else:\n"
        "    sys.exit('no error')\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMAGEGATE_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert "pip install 'imagegate[local]'" in done.stdout
    assert "--index-url https://download.pytorch.org/whl/cpu" in done.stdout
    assert "torch, diffusers, transformers, accelerate" in done.stdout
