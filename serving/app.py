"""The Kino Serve application. `import_path: serving.app:build_app` in deploy/serve/kino.yaml.

Frontend (gRPC, REST) -> Dispatchers -> TextEncoder, Denoiser, Decoder; the ProgressHub carries
pushed progress from the dispatchers to the Frontend's watchers and cancels back. Each deployment's
replicas, resources and autoscaling come from the Serve config file, not from here.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serving.config import load_config
from serving.deployments.decoder import DecoderDeployment
from serving.deployments.denoiser import DenoiserDeployment
from serving.deployments.dispatcher import DispatcherDeployment
from serving.deployments.frontend import FrontendDeployment
from serving.deployments.progress_hub import ProgressHubDeployment
from serving.deployments.text_encoder import TextEncoderDeployment


def build_app(args: dict[str, Any]) -> Application:
    """Build from the app's `args`: {"config": <Kino config mapping>} (see serving.config)."""
    config = dict(args.get("config") or {})
    # Fail the deploy here, with the key named, if the config is wrong. Replicas get the mapping as
    # written and apply their own KINO_* environment (where secrets such as the database URL live),
    # so no secret ever sits in the Serve config or the deployments' arguments.
    load_config(config)
    hub = ProgressHubDeployment.bind(config)
    text_encoder = TextEncoderDeployment.bind(config)
    denoiser = DenoiserDeployment.bind(config, hub)
    decoder = DecoderDeployment.bind(config)
    dispatcher = DispatcherDeployment.bind(config, text_encoder, denoiser, decoder, hub)
    return FrontendDeployment.bind(config, dispatcher, hub, denoiser)
