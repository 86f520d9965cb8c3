"""The S3 artifact store against a real S3-compatible server (SeaweedFS, started by the `s3_server` fixture)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid

import obstore
import pytest
from obstore.store import S3Store

from serving.artifacts import LocalArtifactStore, open_artifact_store
from serving.artifacts.s3 import S3ArtifactStore
from serving.config import load_config
from serving.errors import NotFound


def _store(s3_server, prefix: str) -> S3ArtifactStore:
    return S3ArtifactStore(s3_server.bucket, endpoint=s3_server.url, region=s3_server.region, prefix=prefix,
                           access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key,
                           allow_http=True)


def _raw(s3_server) -> S3Store:
    """The bucket itself, without any prefix."""
    return S3Store(s3_server.bucket, endpoint=s3_server.url, region=s3_server.region,
                   access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key,
                   client_options={"allow_http": True})


def _keys(s3_server, prefix: str) -> set[str]:
    return {meta["path"] for batch in obstore.list(_raw(s3_server), prefix=prefix) for meta in batch}


@pytest.fixture
def store(s3_server):
    """A store under a prefix of its own (tests share the bucket)."""
    return _store(s3_server, f"t-{uuid.uuid4().hex[:8]}")


def test_put_file_uploads_hashes_and_removes_the_scratch_file(store, s3_server):
    scratch = store.scratch_path("tenant-a/job-1.mp4")
    assert scratch.name.endswith("tenant-a_job-1.mp4")  # the suffix survives: PyAV and c2pa read it
    data = b"not really an mp4 " * 1000
    scratch.write_bytes(data)
    artifact = store.put_file("tenant-a/job-1.mp4", scratch)
    assert not scratch.exists()
    assert (artifact.key, artifact.size_bytes, artifact.sha256) == (
        "tenant-a/job-1.mp4", len(data), hashlib.sha256(data).hexdigest())
    chunks = list(store.read_chunks("tenant-a/job-1.mp4", 4096))
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks[:-1]] == [4096] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= 4096


def test_a_multi_mib_file_goes_up_in_parts_and_streams_back(store, tmp_path):
    data = os.urandom(19 * 2**20 + 12345)  # three parts of 8 MiB, the last one short
    source = tmp_path / "big.mp4"
    source.write_bytes(data)
    artifact = store.put_file("t/big.mp4", source)
    assert artifact.size_bytes == len(data) and artifact.sha256 == hashlib.sha256(data).hexdigest()
    digest, size, largest = hashlib.sha256(), 0, 0
    for chunk in store.read_chunks("t/big.mp4", 2**20):
        digest.update(chunk)
        size, largest = size + len(chunk), max(largest, len(chunk))
    assert (size, digest.hexdigest(), largest) == (len(data), artifact.sha256, 2**20)


def test_an_absent_key_is_not_found_with_the_local_store_message(store, tmp_path):
    with pytest.raises(NotFound) as s3_error:
        list(store.read_chunks("tenant-a/nothing.mp4", 1024))
    with pytest.raises(NotFound) as local_error:
        list(LocalArtifactStore(tmp_path).read_chunks("tenant-a/nothing.mp4", 1024))
    assert str(s3_error.value) == str(local_error.value)
    assert "'tenant-a/nothing.mp4'" in str(s3_error.value)
    with pytest.raises(NotFound):
        store.local_path("tenant-a/nothing.mp4")


def test_delete_removes_the_object(store, s3_server):
    store.put_bytes("tenant-a/gone.png", b"png")
    assert f"{store.prefix}/tenant-a/gone.png" in _keys(s3_server, store.prefix)
    store.delete("tenant-a/gone.png")
    assert _keys(s3_server, store.prefix) == set()
    with pytest.raises(NotFound):
        list(store.read_chunks("tenant-a/gone.png", 1024))
    store.delete("tenant-a/gone.png")  # absent: fine


def test_local_path_downloads_once_into_the_cache(store):
    data = os.urandom(100_000)
    store.put_bytes("tenant-a/first-frame.png", data)
    path = store.local_path("tenant-a/first-frame.png")
    assert path.read_bytes() == data and store.cache_dir in path.parents
    assert store.local_path("tenant-a/first-frame.png") == path
    assert [p.name for p in path.parent.iterdir()] == ["first-frame.png"]  # no partial file left


def test_keys_that_escape_are_refused(store):
    for key in ("../other/x.mp4", "/abs.mp4", "a/../../x.mp4", "a//b.mp4", "a/./b.mp4", ""):
        for call in (lambda k: store.put_bytes(k, b"x"), lambda k: list(store.read_chunks(k, 10)),
                     store.delete, store.local_path):
            with pytest.raises(ValueError, match="escapes the store"):
                call(key)


def test_the_prefix_is_honoured(s3_server):
    prefix = f"deep/p-{uuid.uuid4().hex[:8]}"
    store = _store(s3_server, f"/{prefix}/")
    store.put_bytes("tenant-b/v.mp4", b"video")
    assert _keys(s3_server, prefix) == {f"{prefix}/tenant-b/v.mp4"}
    assert b"".join(_store(s3_server, prefix).read_chunks("tenant-b/v.mp4", 2)) == b"video"


def test_a_presigned_url_downloads_without_credentials(store):
    store.put_bytes("tenant-a/shared.mp4", b"shared bytes")
    url = store.presigned_url("tenant-a/shared.mp4", expires_s=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"shared bytes"


def test_the_factory_picks_s3_when_a_bucket_is_set(s3_server, tmp_path):
    local = open_artifact_store(load_config({"storage": {"artifacts_dir": str(tmp_path)}}, environ={}).storage)
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path.resolve()
    environ = {"KINO_STORAGE__S3__ACCESS_KEY_ID": s3_server.access_key,
               "KINO_STORAGE__S3__SECRET_ACCESS_KEY": s3_server.secret_key}
    cfg = load_config({"storage": {"artifacts_dir": str(tmp_path / "unused"), "s3": {
        "bucket": s3_server.bucket, "endpoint": s3_server.url, "prefix": "factory", "allow_http": True}}},
        environ=environ)
    store = open_artifact_store(cfg.storage)
    assert isinstance(store, S3ArtifactStore) and store.prefix == "factory"
    store.put_bytes("tenant/f.bin", b"factory")
    assert b"".join(store.read_chunks("tenant/f.bin", 1024)) == b"factory"
    assert not (tmp_path / "unused").exists()


def test_s3_settings_are_checked():
    from engines.errors import ConfigError

    for s3, key in (({"bucket": "b", "endpoint": "http://x:9000"}, "storage.s3.allow_http"),
                    ({"bucket": "b", "endpoint": "minio:9000"}, "storage.s3.endpoint"),
                    ({"bucket": "b", "access_key_id": "k"}, "storage.s3.secret_access_key"),
                    ({"bucket": "b", "prefix": "a/../b"}, "storage.s3.prefix")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config({"storage": {"s3": s3}}, environ={})
    digits = load_config({}, environ={"KINO_STORAGE__S3__ACCESS_KEY_ID": "12345",
                                      "KINO_STORAGE__S3__SECRET_ACCESS_KEY": "s"}).storage.s3
    assert digits.access_key_id == "12345"
    assert "12345" not in repr(digits)  # the keys stay out of logged configs


def test_a_local_engine_over_s3_renders_an_mp4_that_downloads(s3_server, staged, tmp_path):
    """`kino run`'s path with a bucket: the first frame goes up, the Renderer reads it back through the cache,
    the MP4 goes up, and VideoService.download streams it from the bucket."""
    import dataclasses
    import io

    import av
    import PIL.Image

    from engines.watermark import detect
    from serving.jobs import JobStatus
    from serving.local_engine import LocalEngine
    from serving.videos import CreateVideo

    prefix = f"engine-{uuid.uuid4().hex[:8]}"
    cfg = load_config({"batching": {"measure_batches": False, "max_tokens": 2000},
                       "provenance": {"dev_chain_dir": str(tmp_path / "credentials")},
                       "storage": {"s3": {"bucket": s3_server.bucket, "endpoint": s3_server.url, "prefix": prefix,
                                          "allow_http": True, "access_key_id": s3_server.access_key,
                                          "secret_access_key": s3_server.secret_key}}}, environ={})
    frame = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 40, 40)).save(frame, format="PNG")
    with LocalEngine.open(dataclasses.replace(cfg, model=staged.config), staged, state_dir=tmp_path) as engine:
        job = engine.generate(CreateVideo(prompt="a red kite", size="64x64", seconds=0.5, steps=2, seed=1,
                                          image=frame.getvalue()))
        assert job.status == JobStatus.COMPLETED, job.error_message
        path = engine.save(job, tmp_path / "out.mp4")
    stored = _keys(s3_server, prefix)
    assert f"{prefix}/{job.artifact.key}" in stored and f"{prefix}/{job.conditioning.image_key}" in stored
    assert not (tmp_path / "artifacts").exists()  # nothing went to the directory
    data = path.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (job.artifact.size_bytes, job.artifact.sha256)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 12 and all(detect(f)[0] for f in frames)
