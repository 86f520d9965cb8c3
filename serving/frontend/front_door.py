"""The front door of one Frontend replica: gRPC and the OpenAI-compatible REST API over one domain."""

from __future__ import annotations

from dataclasses import dataclass

from serving.config import KinoConfig
from serving.frontend.grpc.server import GrpcServer, HealthProbe, start_grpc_server
from serving.frontend.rest.app import create_rest_app
from serving.frontend.rest.server import RestServer
from serving.metrics import Metrics
from serving.services import DomainServices


@dataclass
class FrontDoor:
    grpc: GrpcServer
    rest: RestServer | None

    @classmethod
    async def start(cls, cfg: KinoConfig, services: DomainServices, metrics: Metrics,
                    health_probe: HealthProbe | None = None) -> FrontDoor:
        grpc = await start_grpc_server(services.videos, services.cameos, services.accounts, cfg.grpc,
                                       health_probe=health_probe, metrics=metrics)
        rest = None
        if cfg.rest.enabled:
            rest = RestServer(create_rest_app(services.videos, services.accounts.authenticate, metrics,
                                              cameos=services.cameos),
                              cfg.rest.host, cfg.rest.port)
            await rest.start()
        return cls(grpc, rest)

    async def stop(self) -> None:
        await self.grpc.stop(grace=2.0)
        if self.rest is not None:
            await self.rest.stop()
