"""A dispatcher in its own process over the in-process stages (tiny engines), for the lease tests:
`python lease_worker.py DATABASE_URL ARTIFACTS_DIR OWNER`. Runs until killed; logs to stderr."""

from __future__ import annotations

import asyncio
import logging
import sys

import torch


def main(db_url: str, artifacts_dir: str, owner: str) -> None:
    from engines.config import preset
    from engines.staged_pipeline import StagedPipeline
    from engines.watermark import WatermarkConfig
    from serving.artifacts import LocalArtifactStore
    from serving.config import ProvenanceConfig, QueueConfig
    from serving.control_plane.dispatcher import Dispatcher
    from serving.data_plane.local_stages import LocalStages
    from serving.data_plane.rendering import Renderer
    from serving.jobs import open_store
    from serving.provenance.credentials import ContentCredentials

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"{owner} %(levelname)s %(message)s")
    pipeline = StagedPipeline(preset("tiny"))
    renderer = Renderer(pipeline.decoder, pipeline.media, LocalArtifactStore(artifacts_dir),
                        ContentCredentials(ProvenanceConfig(dev_chain_dir=f"{artifacts_dir}/../creds-{owner}")),
                        WatermarkConfig())
    config = QueueConfig(poll_seconds=0.05, lease_seconds=1.0, heartbeat_seconds=0.2)
    dispatcher = Dispatcher(open_store(db_url), LocalStages(pipeline, renderer), config, owner=owner)
    print("ready", flush=True)
    asyncio.run(dispatcher.run())


if __name__ == "__main__":
    main(*sys.argv[1:4])
