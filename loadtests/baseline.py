"""The naive baseline, as users build it: diffusers' LTX2Pipeline called once per request inside
one Ray Serve deployment, given the whole machine, one request at a time (a pipeline object is
not safe to call from two threads, so calls take a lock). Same model classes and the same seeded
weights as Kino's preset, the same defaults (steps, guidance), MP4 with audio written by
diffusers' own muxer.

Made fair on purpose: requests wait inside the replica (a lock, max_ongoing_requests high), not
in Serve's router, whose retry back-off would leave the replica idle between requests; and the
torch thread count is a parameter (default: torch's own, as a user gets it).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

import torch
from ray import serve

from loadtests.harness import JobRecord, Target
from loadtests.workload import RequestClass

APP_NAME = "naive-baseline"


@serve.deployment(name="NaiveLTX2", max_ongoing_requests=256)
class NaiveLTX2:
    def __init__(self, preset_name: str, threads: int | None = None) -> None:
        from engines.config import preset
        from engines.model_loader import load_components
        from engines.runtime import configure_threads

        self.config = preset(preset_name, num_threads=threads)  # None: torch's default threads
        configure_threads(self.config)
        self.pipe = load_components(self.config).pipeline()
        self.sample_rate = self.pipe.vocoder.config.output_sampling_rate
        self._lock = threading.Lock()

    def generate(self, request: dict[str, Any]) -> bytes:
        with self._lock:
            return self._generate(request)

    def _generate(self, request: dict[str, Any]) -> bytes:
        from diffusers.utils import encode_video

        from engines.params import GenerationRequest

        p = GenerationRequest(prompt=request["prompt"], width=request["width"], height=request["height"],
                             seconds=request["seconds"], seed=request["seed"],
                             steps=request.get("steps")).validated(self.config)
        out = self.pipe(prompt=p.prompt, negative_prompt=p.negative_prompt, height=p.height, width=p.width,
                        num_frames=p.num_frames, frame_rate=float(p.fps), num_inference_steps=p.steps,
                        guidance_scale=p.guidance_scale, audio_guidance_scale=p.audio_guidance_scale,
                        guidance_rescale=p.guidance_rescale, audio_guidance_rescale=p.audio_guidance_rescale,
                        stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
                        max_sequence_length=self.config.tokenizer_max_length,
                        generator=torch.Generator().manual_seed(p.seed), output_type="np")
        fd, path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            # The model makes 8k+1 frames; deliver what was asked for, as Kino does.
            frames = out.frames[0][:p.output_frames]
            audio = out.audio[0].float().cpu()[..., :round(p.output_frames / p.fps * self.sample_rate)]
            encode_video(frames, fps=round(float(p.fps)), audio=audio,
                         audio_sample_rate=self.sample_rate, output_path=path)
            with open(path, "rb") as f:
                return f.read()
        finally:
            os.unlink(path)


def build_baseline_app(args: dict[str, Any]):
    return NaiveLTX2.bind(args.get("preset", "tiny"), args.get("threads"))


def app_config(preset_name: str, num_cpus: float, threads: int | None = None, replicas: int = 1) -> dict[str, Any]:
    """The baseline as a Serve config application (deployed beside Kino on the same cluster);
    `num_cpus` is split between its replicas."""
    return {"name": APP_NAME, "route_prefix": None, "import_path": "loadtests.baseline:build_baseline_app",
            "args": {"preset": preset_name, "threads": threads},
            "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
            "deployments": [{"name": "NaiveLTX2", "num_replicas": replicas,
                             "ray_actor_options": {"num_cpus": num_cpus / replicas}}]}


class BaselineTarget(Target):
    def __init__(self, handle, name: str = "naive baseline") -> None:
        self.handle, self.name = handle, name

    def run_one(self, cls: RequestClass, prompt: str, seed: int, record: JobRecord) -> None:
        w, h = (int(x) for x in cls.size.split("x"))
        try:
            data = self.handle.generate.remote({"prompt": prompt, "width": w, "height": h, "seconds": cls.seconds,
                                                "seed": seed, "steps": cls.steps}).result(timeout_s=3600)
            record.done, record.status = time.time(), "completed" if data else "failed"
        except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
            record.done, record.status, record.error = time.time(), "failed", type(e).__name__
