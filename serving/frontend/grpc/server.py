"""The grpc.aio server: VideoService, standard health (grpc.health.v1), reflection, size limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.accounts.service import AccountService
from serving.cameos.service import CameoService
from serving.config import GrpcConfig
from serving.frontend.grpc.auth import ApiKeyInterceptor, principal_of
from serving.frontend.grpc.servicer import AuditServicer, CameoServicer, VideoServicer
from serving.metrics import Metrics, NoMetrics
from serving.videos import VideoService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VideoService"].full_name
SERVICES = tuple(pb.DESCRIPTOR.services_by_name[n].full_name for n in ("VideoService", "CameoService", "AuditService"))
HealthProbe = Callable[[], Awaitable[bool]]


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def stop(self, grace: float = 5.0) -> None:
        for t in self._tasks:
            t.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(videos: VideoService, cameos: CameoService, accounts: AccountService,
                            config: GrpcConfig, *, health_probe: HealthProbe | None = None,
                            health_poll_seconds: float = 1.0, health_recheck_seconds: float = 5.0,
                            metrics: Metrics | None = None) -> GrpcServer:
    """Serve on config.host:config.port (0: a free port; `GrpcServer.port` says which)."""
    options = [
        ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
    ]
    sink = metrics or NoMetrics()
    interceptor = ApiKeyInterceptor(accounts.authenticate, on_call=lambda m, code: sink.api_call("grpc", m, code))
    server = grpc.aio.server(interceptors=[interceptor], options=options)
    pb_grpc.add_VideoServiceServicer_to_server(VideoServicer(videos, principal_of), server)
    pb_grpc.add_CameoServiceServicer_to_server(CameoServicer(cameos, principal_of), server)
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(accounts, principal_of), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {config.host}:{config.port} (in use?)")
    await server.start()
    out = GrpcServer(server=server, port=port, health=health_servicer)
    initial = health_pb2.HealthCheckResponse.NOT_SERVING if health_probe else health_pb2.HealthCheckResponse.SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, initial)
    if health_probe is not None:
        out._tasks.append(asyncio.create_task(_watch_health(health_servicer, health_probe, health_poll_seconds,
                                                            health_recheck_seconds)))
    log.info("gRPC listening on %s:%d", config.host, port)
    return out


async def _watch_health(servicer: health.aio.HealthServicer, probe: HealthProbe, every: float,
                        recheck: float) -> None:
    """SERVING only while the probe (the Serve application's status) says healthy: asked `every` seconds until
    it is, then every `recheck` seconds (each probe is a call to Serve's controller; Kubernetes' readiness
    probe itself looks every 10 s)."""
    last = None
    while True:
        try:
            ok = await probe()
        except Exception:  # noqa: BLE001 - an unreachable controller is unhealthy, not fatal
            ok = False
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != last:
            for name in ("", SERVICE_NAME):
                await servicer.set(name, status)
            last = status
        await asyncio.sleep(recheck if ok else every)
