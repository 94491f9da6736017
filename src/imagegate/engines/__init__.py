"""Engines behind one interface; `build_engine` turns IMAGEGATE_ENGINE into one."""

from __future__ import annotations

from imagegate.engines.base import (
    Engine,
    EngineError,
    EngineRequest,
    EngineResult,
    InputImage,
    OutputImage,
)
from imagegate.settings import Settings


def resolve_engine_name(settings: Settings) -> str:
    if settings.engine != "auto":
        return settings.engine
    return "gemini" if settings.google_api_key_present() else "offline"


def build_engine(settings: Settings) -> Engine:
    name = resolve_engine_name(settings)
    if name == "gemini":
        from imagegate.engines.gemini import GeminiEngine

        return GeminiEngine.from_settings(settings)
    if name == "diffusers":
        from imagegate.engines.diffusers import DiffusersEngine

        return DiffusersEngine.from_settings(settings)
    from imagegate.engines.offline import OfflineEngine

    return OfflineEngine.from_settings(settings)


__all__ = [
    "Engine",
    "EngineError",
    "EngineRequest",
    "EngineResult",
    "InputImage",
    "OutputImage",
    "build_engine",
    "resolve_engine_name",
]
