"""TLS and mutual TLS, with a CA and certificates the test makes itself."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from test_server import make_config

from vidtag.client.grpc_client import VidtagClient
from vidtag.server.background import running_server

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else subject
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pki(d: Path, tag: str) -> dict[str, Path]:
    """A CA plus a server and a client certificate it signed, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"{tag} test CA", ca_key, None, ca=True)
    out = {"ca": d / f"{tag}-ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"{tag} {role}", key, (f"{tag} test CA", ca_key), ca=False)
        out[f"{role}_cert"] = d / f"{tag}-{role}.pem"
        out[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{role}_key"] = _write_key(key, d / f"{tag}-{role}.key")
    return out


def _refused(client: VidtagClient, clip: bytes) -> grpc.StatusCode:
    with client, pytest.raises(grpc.RpcError) as err:
        client.tag(clip, timeout=5)
    return err.value.code()


def test_tls_and_mutual_tls(model_repo: Path, clip_bytes: bytes, tmp_path: Path) -> None:
    pki, other = _pki(tmp_path, "ours"), _pki(tmp_path, "other")
    tls = make_config(model_repo, tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"])
    with running_server(tls) as (srv, _):
        target = f"localhost:{srv.port}"
        with VidtagClient(target, tls_ca_file=pki["ca"]) as c:
            assert c.tag(clip_bytes).tags
        assert _refused(VidtagClient(target), clip_bytes) is grpc.StatusCode.UNAVAILABLE
        wrong_ca = VidtagClient(target, tls_ca_file=other["ca"])
        assert _refused(wrong_ca, clip_bytes) is grpc.StatusCode.UNAVAILABLE

    mtls = make_config(
        model_repo,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"],
    )
    with running_server(mtls) as (srv, _):
        target = f"localhost:{srv.port}"
        ours = {"tls_cert_file": pki["client_cert"], "tls_key_file": pki["client_key"]}
        with VidtagClient(target, tls_ca_file=pki["ca"], **ours) as c:
            assert c.tag(clip_bytes).tags
        no_cert = VidtagClient(target, tls_ca_file=pki["ca"])
        assert _refused(no_cert, clip_bytes) is grpc.StatusCode.UNAVAILABLE
        theirs = {"tls_cert_file": other["client_cert"], "tls_key_file": other["client_key"]}
        foreign = VidtagClient(target, tls_ca_file=pki["ca"], **theirs)
        assert _refused(foreign, clip_bytes) is grpc.StatusCode.UNAVAILABLE


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    from vidtag.server.config import ServeConfig

    with pytest.raises(ValueError, match="together"):
        ServeConfig(tls_cert_file=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="mutual TLS"):
        ServeConfig(tls_client_ca_file=tmp_path / "ca.pem")
