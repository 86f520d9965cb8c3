"""`make image-smoke`: run the CPU image `make image` built, with podman, as a platform team would.

    .venv/bin/python deploy/image/smoke.py [--image ghcr.io/kino-project/kino:0.1.0]

1. `kino --help` in the container;
2. `kino demo` in the container, which writes an MP4 with video and audio (read back here with PyAV);
3. `kino serve` in the container with its gRPC port published on 127.0.0.1: gRPC health answers SERVING,
   and a client outside the container generates a video and downloads it;
4. the figures for docs/benchmarks.md: the image's size and the time from `podman run` to a healthy server.

Podman here runs with Debian's runc and explicit ulimits (see deploy/image/build.sh). Exits non-zero, saying
which step failed, on any failure; every container it starts is removed.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc"]
RUN = [*PODMAN, "run", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--shm-size", "1g"]


def default_image() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"ghcr.io/kino-project/kino:{version}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(title: str) -> None:
    print(f"== {title}", flush=True)


def check_mp4(path: Path) -> str:
    import av

    with av.open(str(path)) as mp4:
        video, audio = mp4.streams.video, mp4.streams.audio
        assert video and audio, f"{path} lacks {'video' if not video else 'audio'}"
        v, a = video[0], audio[0]
        return (f"{v.codec_context.name} {v.width}x{v.height}, {v.frames} frames | "
                f"{a.codec_context.name} {a.rate} Hz")


def help_runs(image: str) -> None:
    step("kino --help")
    out = subprocess.run([*RUN, "--rm", image, "kino", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage: kino" in out.stdout, out.stdout + out.stderr
    print(out.stdout.splitlines()[0])


def demo_writes_an_mp4(image: str, work: Path) -> None:
    step("kino demo (in the container)")
    out_dir = work / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)  # the image's user (uid 1000) writes here
    t = time.monotonic()
    proc = subprocess.run([*RUN, "--rm", "-v", f"{out_dir}:/home/kino/out", image, "kino", "demo", "-o",
                           "out/demo.mp4"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mp4 = out_dir / "demo.mp4"
    print(f"wrote {mp4.stat().st_size} bytes in {time.monotonic() - t:.0f} s: {check_mp4(mp4)}")


def serve_answers_from_outside(image: str, work: Path) -> float:
    """Seconds from `podman run` to gRPC health SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kino.client import KinoClient
    from kino_api.v1 import video_service_pb2 as pb

    step("kino serve (in the container), a client outside it")
    port, name = free_port(), f"kino-smoke-{int(time.time())}"
    env = ["-e", "KINO_GRPC__HOST=0.0.0.0", "-e", "KINO_REST__ENABLED=false"]
    started = time.monotonic()
    subprocess.run([*RUN, "-d", "--name", name, "-p", f"127.0.0.1:{port}:50051", *env, image,
                    "kino", "serve", "--grpc-port", "50051"], check=True, capture_output=True, timeout=120)
    try:
        address = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        deadline, serving = time.monotonic() + 600, False
        while time.monotonic() < deadline and not serving:
            try:
                serving = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status \
                    == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                pass
            if not serving:
                state = subprocess.run([*PODMAN, "inspect", "-f", "{{.State.Running}}", name],
                                       capture_output=True, text=True).stdout.strip()
                assert state == "true", "the container stopped:\n" + logs(name)
                time.sleep(1)
        assert serving, "gRPC health never answered SERVING:\n" + logs(name)
        ready = time.monotonic() - started
        print(f"healthy {ready:.1f} s after podman run")
        with KinoClient(address) as client:
            video = client.create(pb.CreateVideoRequest(prompt="a red ball bouncing, a click at every bounce",
                                                        seconds=1.0, size="64x64"))
            last = None
            for last in client.watch(video.id, timeout=300):
                if last.terminal:
                    break
            done = client.get(video.id)
            assert done.status == pb.VIDEO_STATUS_COMPLETED, f"the video ended {done.status}: {done.error.message}"
            mp4 = work / "served.mp4"
            client.download(video.id, mp4, timeout=60)
        print(f"generated {video.id} through the published port: {check_mp4(mp4)}")
        channel.close()
        return ready
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "5", name], capture_output=True)


def logs(name: str) -> str:
    return subprocess.run([*PODMAN, "logs", "--tail", "40", name], capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/image/smoke.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=default_image(), help="the image to run (default: what make image tags)")
    args = ap.parse_args(argv)
    if shutil.which("podman") is None:
        print("podman is not installed: run `make image` first", file=sys.stderr)
        return 2
    size = int(subprocess.run([*PODMAN, "image", "inspect", "--format", "{{.Size}}", args.image],
                              capture_output=True, text=True, check=True).stdout)
    print(f"{args.image}: {size / 2**20:.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="kino-smoke-") as tmp:
        work = Path(tmp)
        help_runs(args.image)
        demo_writes_an_mp4(args.image, work)
        ready = serve_answers_from_outside(args.image, work)
    print(f"smoke test passed: image {size / 2**20:.0f} MiB, healthy {ready:.1f} s after podman run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
