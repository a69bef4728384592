"""Certificates and keys for the dev control plane: one CA, serving and client certificates,
and the service-account signing key pair. All throwaway, written under the cluster's state dir."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=3650)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of every file the control plane needs (see docs/dev-cluster.md)."""

    ca: KeyPair
    apiserver: KeyPair  # serving, SAN 127.0.0.1/localhost
    admin: KeyPair  # CN=kiln-admin, O=system:masters
    controller_manager: KeyPair  # CN=system:kube-controller-manager
    apiserver_kubelet_client: KeyPair  # the apiserver's identity towards the node agent
    kubelet: KeyPair  # the node agent's serving certificate
    sa_public: Path
    sa_private: Path


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _Ca:
    def __init__(self, directory: Path) -> None:
        now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln-dev-ca")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pair = KeyPair(directory / "ca.crt", directory / "ca.key")
        self.pair.cert.write_bytes(_cert_pem(self.cert))
        _write_private(self.pair.key, _key_pem(self.key))

    def issue(
        self, directory: Path, name: str, cn: str, orgs: tuple[str, ...] = (), *, server: bool = False
    ) -> KeyPair:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        pair.cert.write_bytes(_cert_pem(cert))
        _write_private(pair.key, _key_pem(key))
        return pair


def create_pki(directory: Path) -> Pki:
    """Write a fresh CA, the certificates signed by it and the service-account keys into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = _Ca(directory)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private, sa_public = directory / "sa.key", directory / "sa.pub"
    _write_private(sa_private, _key_pem(sa_key))
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Pki(
        ca=ca.pair,
        apiserver=ca.issue(directory, "apiserver", "kube-apiserver", server=True),
        admin=ca.issue(directory, "admin", "kiln-admin", ("system:masters",)),
        controller_manager=ca.issue(directory, "controller-manager", "system:kube-controller-manager"),
        apiserver_kubelet_client=ca.issue(
            directory, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        ),
        kubelet=ca.issue(directory, "kubelet", "kiln-node-agent", server=True),
        sa_public=sa_public,
        sa_private=sa_private,
    )


def load_pki(directory: Path) -> Pki:
    def pair(name: str) -> KeyPair:
        return KeyPair(directory / f"{name}.crt", directory / f"{name}.key")

    return Pki(
        ca=pair("ca"),
        apiserver=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("controller-manager"),
        apiserver_kubelet_client=pair("apiserver-kubelet-client"),
        kubelet=pair("kubelet"),
        sa_public=directory / "sa.pub",
        sa_private=directory / "sa.key",
    )
