"""Local open-weight models through diffusers: FLUX.2 [klein] 4B by default, any pipeline by id or path.

The pipeline is loaded once per worker process and kept warm. Every call into torch runs on
one dedicated thread: that thread is the lock around the pipeline (one generation at a time
per device) and keeps the event loop free to renew leases and answer shutdown while a
generation takes seconds or minutes.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import io
import logging
import math
import re
import threading
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageOps

from imagegate.engines.aspect import size_for
from imagegate.engines.base import EngineError, EngineRequest, EngineResult, InputImage, OutputImage
from imagegate.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-4B"

LOCAL_EXTRA_MODULES = ("torch", "diffusers", "transformers", "accelerate")

INSTALL_HINT = (
    "The diffusers engine needs the optional `local` extra: pip install 'imagegate[local]'. "
    "On a machine without a CUDA GPU, install the CPU build of torch first "
    "(pip install torch --index-url https://download.pytorch.org/whl/cpu), "
    "otherwise pip may fetch the much larger CUDA build."
)

_DEVICE_SETTING = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DTYPE_NAMES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}

# Pipelines that take a list of reference images although their `image` parameter is typed
# with diffusers' PipelineImageInput, which elsewhere means "a batch" (img2img and friends).
_MULTI_REFERENCE_PIPELINES = frozenset({"QwenImageEditPlusPipeline"})

# Pipelines that transform an image and cannot draw from a prompt alone, recognised by the
# naming diffusers uses for them.
_EDIT_ONLY_NAME = re.compile(
    r"Img2Img|ImageToImage|InstructPix2Pix|Edit|Variation|Upscale|Depth2Img|Redux|Refiner|Image2Video"
)

# Flux2KleinPipeline rejects references with a side under 64 px; upscaling small ones is
# what a user of a hosted API expects rather than a failure.
_MIN_REFERENCE_SIDE = 64

ReferenceMode = Literal["many", "one", "none"]


def missing_packages() -> list[str]:
    """The modules of the `local` extra that cannot be imported here."""
    return [name for name in LOCAL_EXTRA_MODULES if importlib.util.find_spec(name) is None]


@dataclass(frozen=True, slots=True)
class PipelineTraits:
    """What imagegate needs to know about a loaded pipeline to call it well."""

    class_name: str
    parameters: frozenset[str]
    references: ReferenceMode
    # Edit-only pipelines (img2img, instruct-pix2pix, ...) cannot work from the prompt alone.
    needs_reference: bool
    steps: int | None
    guidance: float | None
    # Side of the square the model is trained for; other ratios keep about its area.
    side: int | None
    # Width and height must be multiples of this (VAE scale factor x transformer patch size).
    multiple: int


def inspect_pipeline(pipeline: Any) -> PipelineTraits:
    """Read a pipeline's `__call__` signature and config; raise EngineError if imagegate cannot drive it."""
    class_name = type(pipeline).__name__
    signature = inspect.signature(pipeline.__call__)
    parameters = frozenset(signature.parameters)
    if "prompt" not in parameters:
        raise EngineError(
            f"{class_name} takes no prompt, so imagegate cannot drive it: use a text-to-image "
            f"or image-editing pipeline such as {DEFAULT_MODEL}."
        )
    if "mask_image" in parameters:
        raise EngineError(
            f"{class_name} is an inpainting pipeline and needs a mask, which this API has no field for: "
            f"use a text-to-image or image-editing pipeline such as {DEFAULT_MODEL}."
        )
    image_parameter = signature.parameters.get("image")
    references = reference_mode(type(pipeline))
    needs_reference = image_parameter is not None and (
        image_parameter.default is inspect.Parameter.empty
        or bool(_EDIT_ONLY_NAME.search(class_name))
    )
    steps, guidance = _family_steps_and_guidance(pipeline, class_name)
    return PipelineTraits(
        class_name=class_name,
        parameters=parameters,
        references=references,
        needs_reference=needs_reference,
        steps=steps,
        guidance=guidance,
        side=_native_side(pipeline),
        multiple=_size_multiple(pipeline),
    )


def reference_mode(pipeline_class: type) -> ReferenceMode:
    """How a pipeline class takes reference images, read from its `__call__` signature."""
    call = pipeline_class.__call__
    image_parameter = inspect.signature(call).parameters.get("image")
    if image_parameter is None:
        return "none"
    if pipeline_class.__name__ in _MULTI_REFERENCE_PIPELINES:
        return "many"
    if _annotation_lists_images(_resolved_annotation(call, image_parameter)):
        return "many"
    return "one"


def _family_steps_and_guidance(pipeline: Any, class_name: str) -> tuple[int | None, float | None]:
    """The family's recommended steps and guidance; (None, None) leaves the pipeline's own defaults."""
    if class_name.startswith("Flux2Klein"):
        if getattr(pipeline.config, "is_distilled", False):
            # FLUX.2 [klein] 4B and 9B are step- and guidance-distilled: BFL and diffusers run
            # them at 4 steps with guidance 1.0. The pipeline's own defaults (50, 4.0) are the
            # undistilled base model's and would be 12x slower for no gain.
            return 4, 1.0
        return 50, 4.0
    return None, None


def _resolved_annotation(function: Any, parameter: inspect.Parameter) -> Any:
    annotation = parameter.annotation
    if isinstance(annotation, str):
        # Pipelines written with `from __future__ import annotations` keep annotations as strings.
        try:
            annotation = typing.get_type_hints(function).get(parameter.name, annotation)
        except Exception:
            return annotation
    return annotation


def _annotation_lists_images(annotation: Any) -> bool:
    """True for `list[PIL.Image.Image] | PIL.Image.Image | None` and the like: a list of references.

    diffusers' PipelineImageInput also admits lists, but alongside tensors and arrays: there a
    list is a batch of inputs, one image per prompt, not several references for one image.
    """
    if isinstance(annotation, str):
        return (
            "list[" in annotation
            and "Image" in annotation
            and not re.search(r"Tensor|ndarray|PipelineImageInput", annotation)
        )
    members = _union_members(annotation)
    batch_types = [member for member in members if _is_tensor_like(member)]
    image_lists = [
        member
        for member in members
        if typing.get_origin(member) is list
        and any(_mentions_pil_image(arg) for arg in typing.get_args(member))
    ]
    return bool(image_lists) and not batch_types


def _union_members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _union_members(arg)]
    return [annotation]


def _is_tensor_like(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return any(_is_tensor_like(arg) for arg in typing.get_args(annotation))
    return isinstance(annotation, type) and annotation.__name__ in {
        "Tensor",
        "ndarray",
        "FloatTensor",
    }


def _mentions_pil_image(annotation: Any) -> bool:
    return any(
        member is Image.Image
        or (
            typing.get_origin(member) is list
            and any(_mentions_pil_image(arg) for arg in typing.get_args(member))
        )
        for member in _union_members(annotation)
    )


def _native_side(pipeline: Any) -> int | None:
    scale = getattr(pipeline, "vae_scale_factor", None)
    sample = getattr(pipeline, "default_sample_size", None)
    if sample is None:
        for name in ("unet", "transformer"):
            component = getattr(pipeline, name, None)
            sample = getattr(getattr(component, "config", None), "sample_size", None)
            if sample is not None:
                break
    if isinstance(scale, int) and isinstance(sample, int):
        return sample * scale
    return None


def _size_multiple(pipeline: Any) -> int:
    # The image processor's factor is what the pipeline itself rounds to (VAE scale x 2 for
    # FLUX, which packs 2x2 latents); a transformer's patch size multiplies the VAE scale too.
    candidates: list[int] = []
    processor_config = getattr(getattr(pipeline, "image_processor", None), "config", None)
    processor_scale = getattr(processor_config, "vae_scale_factor", None)
    if isinstance(processor_scale, int) and processor_scale > 0:
        candidates.append(processor_scale)
    vae_scale = getattr(pipeline, "vae_scale_factor", None)
    transformer_config = getattr(getattr(pipeline, "transformer", None), "config", None)
    patch = getattr(transformer_config, "patch_size", None)
    if isinstance(vae_scale, int) and vae_scale > 0:
        candidates.append(vae_scale * (patch if isinstance(patch, int) and patch > 0 else 1))
    return math.lcm(*candidates) if candidates else 16


def output_size(ratio: str | None, side: int, multiple: int) -> tuple[int, int]:
    """Width and height for `ratio` with about `side`² pixels, both multiples of `multiple`."""
    width, height = size_for(ratio, area=side * side, multiple=multiple)
    if width % multiple or height % multiple:
        # size_for answers with Gemini's own sizes at 1024²; a model with a coarser grid
        # needs them re-rounded.
        width = max(multiple, round(width / multiple) * multiple)
        height = max(multiple, round(height / multiple) * multiple)
    return width, height


def _ratio_of(image: InputImage) -> str:
    divisor = math.gcd(image.width, image.height) or 1
    return f"{image.width // divisor}:{image.height // divisor}"


def _decode_reference(image: InputImage) -> Image.Image:
    with Image.open(io.BytesIO(image.data)) as opened:
        picture = ImageOps.exif_transpose(opened)
        picture.load()
    if picture.mode in ("RGBA", "LA") or (picture.mode == "P" and "transparency" in picture.info):
        # Transparent areas become white, not the black that dropping the alpha channel leaves.
        background = Image.new("RGB", picture.size, (255, 255, 255))
        background.paste(picture.convert("RGBA"), mask=picture.convert("RGBA").getchannel("A"))
        picture = background
    picture = picture.convert("RGB")
    shortest = min(picture.size)
    if shortest < _MIN_REFERENCE_SIDE:
        scale = _MIN_REFERENCE_SIDE / shortest
        picture = picture.resize(
            (math.ceil(picture.width * scale), math.ceil(picture.height * scale)),
            Image.Resampling.LANCZOS,
        )
    return picture


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _GenerationCancelled(Exception):
    """Raised inside the pipeline's step callback to abandon a generation nobody waits for."""


@dataclass(slots=True)
class _Loaded:
    pipeline: Any
    traits: PipelineTraits
    device: str
    dtype: str


class DiffusersEngine:
    name = "diffusers"
    # One generation at a time per device: a second one would only queue for the same GPU
    # and double its memory.
    concurrency = 1

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        steps: int | None = None,
        guidance: float | None = None,
        resolution: int | None = None,
        cpu_offload: bool = False,
        pipeline: Any | None = None,
    ) -> None:
        """`pipeline`: an already-built diffusers pipeline, placed on its device, to serve instead of loading `model`."""
        device = device.strip().lower()
        if not _DEVICE_SETTING.match(device):
            raise EngineError(
                f"IMAGEGATE_DIFFUSERS_DEVICE={device!r} is not a device: use auto, cpu, mps, cuda or cuda:N."
            )
        dtype = dtype.strip().lower()
        if dtype != "auto" and dtype not in _DTYPE_NAMES:
            raise EngineError(
                f"IMAGEGATE_DIFFUSERS_DTYPE={dtype!r} is not a dtype: use auto, bfloat16, float16 or float32."
            )
        for setting, value in (("STEPS", steps), ("RESOLUTION", resolution)):
            if value is not None and value < 1:
                raise EngineError(
                    f"IMAGEGATE_DIFFUSERS_{setting}={value} must be a positive number."
                )
        self.model = model
        self._device_setting = device
        self._dtype_setting = dtype
        self._steps = steps
        self._guidance = guidance
        self._resolution = resolution
        self._cpu_offload = cpu_offload
        self._given_pipeline = pipeline
        self._loaded: _Loaded | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> DiffusersEngine:
        missing = missing_packages()
        if missing:
            raise EngineError(f"{INSTALL_HINT} Missing here: {', '.join(missing)}.")
        return cls(
            model=settings.diffusers_model,
            device=settings.diffusers_device,
            dtype=settings.diffusers_dtype,
            steps=settings.diffusers_steps,
            guidance=settings.diffusers_guidance,
            resolution=settings.diffusers_resolution,
            cpu_offload=settings.diffusers_cpu_offload,
        )

    @property
    def traits(self) -> PipelineTraits | None:
        """What the loaded pipeline can do; None before `start`."""
        return self._loaded.traits if self._loaded else None

    @property
    def pipeline(self) -> Any | None:
        """The loaded diffusers pipeline; None before `start`."""
        return self._loaded.pipeline if self._loaded else None

    async def start(self) -> None:
        if self._loaded is not None:
            return
        self._closing.clear()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagegate-diffusers")
        loop = asyncio.get_running_loop()
        try:
            self._loaded = await loop.run_in_executor(self._executor, self._load)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        logger.info("%s", self.describe())

    async def close(self) -> None:
        # A generation still running stops at its next step instead of holding the device.
        self._closing.set()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            del loaded
            _free_accelerator_memory()

    def describe(self) -> str:
        if self._loaded is None:
            return f"diffusers: {self.model} (device {self._device_setting}, not loaded yet)"
        traits = self._loaded.traits
        references = {
            "many": "text-to-image and multi-reference editing",
            "one": "edits one reference image"
            if traits.needs_reference
            else "text-to-image and single-reference editing",
            "none": "text-to-image only",
        }[traits.references]
        steps = self._steps or traits.steps
        guidance = self._guidance if self._guidance is not None else traits.guidance
        return (
            f"diffusers: {self.model} ({traits.class_name}, {references}) on {self._loaded.device}, "
            f"{self._loaded.dtype}, {steps if steps is not None else 'default'} steps, "
            f"guidance {guidance if guidance is not None else 'default'}, "
            f"~{self._resolution or traits.side or 'default'}px"
            + (", model CPU offload" if self._cpu_offload and self._loaded.device != "cpu" else "")
        )

    async def generate(self, request: EngineRequest) -> EngineResult:
        loaded, executor = self._loaded, self._executor
        if loaded is None or executor is None:
            raise EngineError("the diffusers engine was not started", retryable=True)
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor, self._generate_blocking, loaded, request, cancelled
            )
        except asyncio.CancelledError:
            # The thread cannot be killed; the step callback sees this and abandons the run.
            cancelled.set()
            raise

    # --- on the engine's thread ------------------------------------------------

    def _load(self) -> _Loaded:
        try:
            import torch
            from diffusers import DiffusionPipeline
        except ImportError as exc:
            raise EngineError(f"{INSTALL_HINT} ({exc})") from exc

        if self._given_pipeline is not None:
            pipeline = self._given_pipeline
            device = str(pipeline.device)
            dtype_name = str(pipeline.dtype).removeprefix("torch.")
        else:
            device = _resolve_device(torch, self._device_setting)
            dtype = _resolve_dtype(torch, self._dtype_setting, device)
            dtype_name = str(dtype).removeprefix("torch.")
            pipeline = self._from_pretrained(DiffusionPipeline, dtype)
            self._place(pipeline, device)
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        try:
            traits = inspect_pipeline(pipeline)
        except EngineError as exc:
            raise EngineError(f"IMAGEGATE_DIFFUSERS_MODEL={self.model}: {exc.message}") from exc
        return _Loaded(pipeline=pipeline, traits=traits, device=device, dtype=dtype_name)

    def _place(self, pipeline: Any, device: str) -> None:
        try:
            if self._cpu_offload and device != "cpu":
                pipeline.enable_model_cpu_offload(device=device)
            else:
                if self._cpu_offload:
                    logger.warning(
                        "IMAGEGATE_DIFFUSERS_CPU_OFFLOAD has no effect on the CPU; ignoring it"
                    )
                pipeline.to(device)
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            hint = "" if self._cpu_offload else "set IMAGEGATE_DIFFUSERS_CPU_OFFLOAD=true, or "
            raise EngineError(
                f"{self.model} does not fit in {device} memory: {hint}use a smaller model "
                f"or a GPU with more memory. ({exc})"
            ) from exc

    def _from_pretrained(self, pipeline_class: Any, dtype: Any) -> Any:
        import diffusers

        location = Path(self.model).expanduser()
        is_local = location.exists()
        if not is_local and _looks_like_path(self.model):
            raise EngineError(
                f"IMAGEGATE_DIFFUSERS_MODEL={self.model}: no such directory. Point it at a directory "
                f"holding a diffusers pipeline (model_index.json and one folder per component), "
                f"or at a Hugging Face model id such as {DEFAULT_MODEL}."
            )
        if is_local and not (location / "model_index.json").is_file():
            raise EngineError(
                f"IMAGEGATE_DIFFUSERS_MODEL={self.model} is not a diffusers pipeline directory: it has no "
                f"model_index.json. Single-file checkpoints (.safetensors) are not supported; use the "
                f"model's diffusers layout (for example `hf download <model id> --local-dir DIR`)."
            )
        # diffusers renamed `torch_dtype` to `dtype` in 0.42 and warns about the old name there.
        dtype_keyword = (
            "dtype" if _version_tuple(diffusers.__version__) >= (0, 42) else "torch_dtype"
        )
        source = str(location) if is_local else self.model
        try:
            return pipeline_class.from_pretrained(source, **{dtype_keyword: dtype})
        except Exception as exc:
            raise EngineError(self._load_failure(exc, is_local=is_local)) from exc

    def _load_failure(self, exc: Exception, *, is_local: bool) -> str:
        reason = f"{type(exc).__name__}: {exc}"
        if is_local:
            return f"IMAGEGATE_DIFFUSERS_MODEL={self.model}: could not load the pipeline in that directory ({reason})."
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE
        where = f"It is not complete in the Hugging Face cache ({constants.HF_HUB_CACHE}) and " + (
            "downloads are off (HF_HUB_OFFLINE=1)." if offline else "could not be downloaded."
        )
        fix = (
            f"Fix: download it once on a machine with internet access (`hf download {self.model}`) into the "
            f"cache this worker uses (set HF_HOME to share one), or set IMAGEGATE_DIFFUSERS_MODEL to a local "
            f"directory holding the pipeline."
        )
        if "gated" in str(exc).lower() or type(exc).__name__ == "GatedRepoError":
            fix += " The model is gated: accept its licence on huggingface.co and set HF_TOKEN."
        return f"Could not load diffusers model {self.model!r}. {where} {fix} ({reason})"

    def _generate_blocking(
        self, loaded: _Loaded, request: EngineRequest, cancelled: threading.Event
    ) -> EngineResult:
        if cancelled.is_set() or self._closing.is_set():
            raise _cancelled_error()
        import torch

        traits = loaded.traits
        notes: list[str] = []
        references = self._references_for(traits, request, notes)
        kwargs: dict[str, Any] = {"prompt": request.prompt}

        side = self._resolution or traits.side or 1024
        ratio = request.aspect_ratio or (_ratio_of(request.images[0]) if request.images else None)
        width, height = output_size(ratio, side, traits.multiple)
        if {"width", "height"} <= traits.parameters:
            kwargs["width"], kwargs["height"] = width, height
        if references:
            if traits.references == "many":
                kwargs["image"] = references
            elif {"width", "height"} <= traits.parameters:
                kwargs["image"] = references[0]
            else:
                # Pipelines without width/height (img2img, ...) render at the reference's size:
                # fitting it first is how the requested ratio and the model's area are honoured.
                kwargs["image"] = ImageOps.fit(
                    references[0], (width, height), Image.Resampling.LANCZOS
                )

        steps = self._steps or traits.steps
        if steps is not None and "num_inference_steps" in traits.parameters:
            kwargs["num_inference_steps"] = steps
        guidance = self._guidance if self._guidance is not None else traits.guidance
        if guidance is not None and "guidance_scale" in traits.parameters:
            kwargs["guidance_scale"] = guidance
        if request.seed is not None and "generator" in traits.parameters:
            # diffusers documents CPU generators as the reproducible choice on Apple GPUs.
            generator_device = "cpu" if loaded.device.startswith("mps") else loaded.device
            kwargs["generator"] = torch.Generator(device=generator_device).manual_seed(request.seed)
        if "num_images_per_prompt" in traits.parameters:
            kwargs["num_images_per_prompt"] = 1
        if "output_type" in traits.parameters:
            kwargs["output_type"] = "pil"
        if "callback_on_step_end" in traits.parameters:
            kwargs["callback_on_step_end"] = self._step_callback(cancelled)

        output = self._call_pipeline(loaded, kwargs, width, height)
        images = getattr(output, "images", None)
        if (
            not isinstance(images, list)
            or not images
            or not all(isinstance(image, Image.Image) for image in images)
        ):
            raise EngineError(
                f"{self.model} ({traits.class_name}) returned no images (is it a video or audio pipeline?): "
                f"use a text-to-image or image-editing pipeline such as {DEFAULT_MODEL}."
            )
        return EngineResult(
            images=[
                OutputImage(data=_encode_png(image), mime_type="image/png") for image in images[:1]
            ],
            model=self.model,
            text=" ".join(notes) or None,
        )

    def _references_for(
        self, traits: PipelineTraits, request: EngineRequest, notes: list[str]
    ) -> list[Image.Image]:
        count = len(request.images)
        if count and traits.references == "none":
            raise EngineError(
                f"{self.model} ({traits.class_name}) makes images from text only and cannot use the "
                f"{count} reference image{'s' if count > 1 else ''} sent: send the prompt alone, or set "
                f"IMAGEGATE_DIFFUSERS_MODEL to a model that edits, such as {DEFAULT_MODEL}."
            )
        if not count and traits.needs_reference:
            raise EngineError(
                f"{self.model} ({traits.class_name}) edits a reference image and cannot draw from a prompt "
                f"alone: send a reference image, or set IMAGEGATE_DIFFUSERS_MODEL to a text-to-image model "
                f"such as {DEFAULT_MODEL}."
            )
        if traits.references == "one" and count > 1:
            notes.append(f"This model takes one reference image; used the first of {count}.")
            return [_decode_reference(request.images[0])]
        return [_decode_reference(image) for image in request.images]

    def _step_callback(self, cancelled: threading.Event) -> Any:
        closing = self._closing

        def on_step_end(
            pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            if cancelled.is_set() or closing.is_set():
                raise _GenerationCancelled
            return callback_kwargs

        return on_step_end

    def _call_pipeline(
        self, loaded: _Loaded, kwargs: dict[str, Any], width: int, height: int
    ) -> Any:
        try:
            return loaded.pipeline(**kwargs)
        except _GenerationCancelled:
            raise _cancelled_error() from None
        except RuntimeError as exc:
            # torch.cuda.OutOfMemoryError is a RuntimeError; MPS reports its own as a plain one.
            if "out of memory" not in str(exc).lower():
                raise self._failure(loaded, exc) from exc
        except Exception as exc:
            raise self._failure(loaded, exc) from exc
        # Only running out of memory gets here: outside the except block the traceback (and the
        # tensors its frames hold) is gone, so the cache can actually go back to the device and
        # the worker carries on with its next task.
        gc.collect()
        _free_accelerator_memory()
        raise EngineError(
            f"{self.model} ran out of {loaded.device} memory making a {width}x{height} image. "
            f"Set IMAGEGATE_DIFFUSERS_CPU_OFFLOAD=true, lower IMAGEGATE_DIFFUSERS_RESOLUTION, send fewer "
            f"or smaller reference images, or use a smaller model."
        )

    def _failure(self, loaded: _Loaded, exc: Exception) -> EngineError:
        logger.exception("diffusers pipeline %s failed", loaded.traits.class_name)
        return EngineError(
            f"{self.model} ({loaded.traits.class_name}) could not make this image: {type(exc).__name__}: {exc}"
        )


def _cancelled_error() -> EngineError:
    return EngineError(
        "the generation was cancelled (worker shutting down or task abandoned)", retryable=True
    )


def _looks_like_path(model: str) -> bool:
    # Hugging Face ids are "name" or "owner/name"; anything else is meant as a directory.
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _resolve_device(torch: Any, setting: str) -> str:
    cuda_available = bool(torch.cuda.is_available())
    mps_available = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if setting == "auto":
        return "cuda" if cuda_available else "mps" if mps_available else "cpu"
    if setting.startswith("cuda"):
        if not cuda_available:
            raise EngineError(
                f"IMAGEGATE_DIFFUSERS_DEVICE={setting}, but torch {torch.__version__} sees no CUDA device "
                f"(built for CUDA: {torch.version.cuda or 'no'}). Install the CUDA build of torch "
                f"(pytorch.org/get-started) or set IMAGEGATE_DIFFUSERS_DEVICE=cpu."
            )
        index = int(setting.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise EngineError(
                f"IMAGEGATE_DIFFUSERS_DEVICE={setting}, but only {torch.cuda.device_count()} CUDA device(s) are visible."
            )
    if setting == "mps" and not mps_available:
        raise EngineError("IMAGEGATE_DIFFUSERS_DEVICE=mps, but torch sees no Apple GPU (MPS) here.")
    return setting


def _resolve_dtype(torch: Any, setting: str, device: str) -> Any:
    if setting != "auto":
        return getattr(torch, _DTYPE_NAMES[setting])
    if device == "cpu":
        # CPU kernels for half precision are slow or missing; float32 is the safe default there.
        return torch.float32
    if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        # Pre-Ampere GPUs (T4, V100) have no fast bfloat16.
        return torch.float16
    return torch.bfloat16


def _free_accelerator_memory() -> None:
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if (
        mps is not None
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        mps.empty_cache()
