"""Signing MP4s with a C2PA manifest (c2pa-python), and reading them back.

The manifest says: created by Kino (name, version), digital source type trainedAlgorithmicMedia, the model
id and the LoRA adapters applied to it (name and scale; [] for none), a SHA-256 of the prompt (never the
prompt), and for a remix the parent video, also attached as a `parentOf` ingredient so its own credentials
travel with the child.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2pa import Builder, C2paSignerInfo, C2paSigningAlg, Context, Reader, Settings, Signer

from serving.config import ProvenanceConfig
from serving.provenance.claim import Claim
from serving.provenance.dev_certs import ensure_dev_chain

log = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATOR = "Kino"
ASSERTION = "org.kino.generation"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kino")
    except PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class Verification:
    state: str  # Trusted | Valid | Invalid
    failures: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def assertion(self, label: str) -> dict[str, Any] | None:
        for a in self.manifest.get("assertions", []):
            if a.get("label") == label:
                return a.get("data")
        return None


class ContentCredentials:
    """Signs files with the configured chain, or a local development chain made on first use."""

    def __init__(self, config: ProvenanceConfig) -> None:
        if config.cert_chain and config.private_key:
            chain, key = Path(config.cert_chain).read_bytes(), Path(config.private_key).read_bytes()
            self.trust_anchor: bytes | None = None
        else:
            dev, created = ensure_dev_chain(config.dev_chain_dir)
            chain, key, self.trust_anchor = dev.chain_pem, dev.key_pem, dev.root_pem
            if created:
                log.warning("no C2PA signing key configured: created a local development chain in %s; its root "
                            "(root.pem) is trusted by nobody else", dev.directory)
        alg = {"es256": C2paSigningAlg.ES256, "ed25519": C2paSigningAlg.ED25519}[config.algorithm]
        self._signer = Signer.from_info(C2paSignerInfo(alg, chain, key, None))  # no timestamp authority offline

    def manifest(self, claim: Claim) -> dict[str, Any]:
        agent = {"name": GENERATOR, "version": _version()}
        return {
            "claim_generator_info": [agent],
            "title": f"{claim.video_id}.mp4",
            "format": "video/mp4",
            "assertions": [
                {"label": "c2pa.actions.v2", "data": {"actions": [{
                    "action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                    "softwareAgent": agent}]}},
                {"label": ASSERTION, "data": {"model": claim.model, "prompt_sha256": claim.prompt_sha256,
                                               "parent_video_id": claim.parent_video_id,
                                               "video_id": claim.video_id,
                                               "loras": [{"name": n, "scale": s} for n, s in claim.loras]}},
            ],
        }

    def sign(self, source: Path, dest: Path, claim: Claim, parent: Path | None = None) -> None:
        """Write `source` with a signed manifest to `dest` (a Builder signs exactly once)."""
        builder = Builder(self.manifest(claim))
        if parent is not None:
            with open(parent, "rb") as f:
                builder.add_ingredient({"title": f"{claim.parent_video_id}.mp4", "relationship": "parentOf"},
                                       "video/mp4", f)
        with open(source, "rb") as src, open(dest, "w+b") as dst:
            builder.sign(self._signer, "video/mp4", src, dst)


def verify(data: bytes | Path, trust_anchors: bytes | None = None) -> Verification:
    """Read and validate a file's manifest; with our root as trust anchor a good file is Trusted."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    ctx = Context(settings=Settings.from_dict({"trust": {"trust_anchors": trust_anchors.decode()}})) \
        if trust_anchors else None
    reader = Reader("video/mp4", io.BytesIO(raw), context=ctx) if ctx else Reader("video/mp4", io.BytesIO(raw))
    state = reader.get_validation_state()
    results = reader.get_validation_results() or {}
    failures = [f["code"] for f in results.get("activeManifest", {}).get("failure", [])]
    manifest = json.loads(reader.json())
    active = manifest.get("manifests", {}).get(manifest.get("active_manifest", ""), {})
    return Verification(state=state, failures=failures, manifest=active)
