"""A local development signing chain (root -> intermediate -> signer), made when none is configured.

C2PA readers accept an end-entity certificate only with CA:FALSE, a critical digitalSignature
key usage, subject and authority key identifiers and the emailProtection extended key usage
(documentSigning too, listed for readers that know it). Nobody but you trusts this root: pass
`root.pem` to a reader as a trust anchor to validate Kino's output in development.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")


@dataclass(frozen=True)
class DevChain:
    chain_pem: bytes  # signer + intermediate (no root), as C2PA signers expect
    key_pem: bytes
    root_pem: bytes
    directory: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kino development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, path_len: int | None, days: int):
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
         .add_extension(_key_usage(ca=ca), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_key is not key:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_dev_chain(directory: str | Path) -> tuple[DevChain, bool]:
    """Load the chain in `directory`, or create it there (atomically); returns (chain, created)."""
    directory = Path(directory)
    files = {n: directory / n for n in ("chain.pem", "signer.key", "root.pem")}
    if all(p.is_file() for p in files.values()):
        return DevChain(files["chain.pem"].read_bytes(), files["signer.key"].read_bytes(),
                        files["root.pem"].read_bytes(), directory), False
    root_k, int_k, ee_k = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Kino Dev Root CA", root_k, "Kino Dev Root CA", root_k, ca=True, path_len=1, days=3650)
    inter = _cert("Kino Dev Intermediate CA", int_k, "Kino Dev Root CA", root_k, ca=True, path_len=0, days=3650)
    signer = _cert("Kino Dev Signer", ee_k, "Kino Dev Intermediate CA", int_k, ca=False, path_len=None, days=825)
    key_pem = ee_k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    staging = directory.with_name(f".{directory.name}.{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "chain.pem").write_bytes(_pem(signer) + _pem(inter))
    (staging / "signer.key").write_bytes(key_pem)
    (staging / "root.pem").write_bytes(_pem(root))
    os.chmod(staging / "signer.key", 0o600)
    try:
        staging.rename(directory)  # first writer wins; a concurrent one loads the winner's chain
        created = True
    except OSError:
        for p in staging.iterdir():
            p.unlink()
        staging.rmdir()
        created = False
    return ensure_dev_chain(directory)[0], created
