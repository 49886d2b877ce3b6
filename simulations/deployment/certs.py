"""Certificates and keys for a deployment: one CA, the SuperLink's TLS certificate, site keys.

The coordinator runs this once and keeps `ca.key` private:
- `ca.crt`, `ca.key`: a self-signed certificate authority (RSA 3072, 10 years). Every
  SuperNode gets `ca.crt` (`--root-certificates`) so it trusts only this SuperLink.
- `superlink.crt`, `superlink.key`: the SuperLink's TLS certificate (RSA 3072, 2 years),
  signed by the CA, valid for the given host names and IP addresses and always for
  127.0.0.1, where the SuperLink's own ServerApp launcher connects to it and checks it
  (`--ssl-ca-certfile ca.crt --ssl-certfile superlink.crt --ssl-keyfile superlink.key`).
- `sites/<site>.key`, `sites/<site>.pub`: one elliptic-curve key pair (NIST P-384) per
  site for SuperNode authentication, both in OpenSSH format: the private key for
  `--auth-supernode-private-key`, the public key for `flwr supernode register`. The private key belongs on that site's machine only.

Nothing is overwritten: an existing output folder is refused, and the files appear all
at once (written into a temporary folder that is renamed into place).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SUPERLINK_SELF = ("127.0.0.1",)  # the SuperLink dials itself here (for any --host, even 0.0.0.0)

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SUPERLINK_CERT, SUPERLINK_KEY = "superlink.crt", "superlink.key"
SITES_DIR = "sites"  # sites/<site>.key and sites/<site>.pub: each site's authentication key pair

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _private_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, public_key, issuer: x509.Name, signer, days: int, *, ca: bool, hosts: list[str]):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def check_request(hosts: list[str], sites: list[str]) -> None:
    """ValueError naming the bad option before anything is generated."""
    if not hosts or any(not h.strip() for h in hosts):
        raise ValueError("--host: give the SuperLink's host name or IP address (repeat for several)")
    if not sites:
        raise ValueError("--site: give at least one site name (repeat for several)")
    for site in sites:
        if not SITE_NAME.fullmatch(site):
            raise ValueError(f"--site {site!r}: use letters, digits, '.', '_' and '-' only")
    if len(set(sites)) != len(sites):
        raise ValueError("--site: a site name is given twice")


def create(out_dir: Path, hosts: list[str], sites: list[str]) -> list[Path]:
    """Write the CA, the SuperLink certificate and every site's key pair into `out_dir`."""
    check_request(hosts, sites)
    if out_dir.exists():
        raise FileExistsError(f"--out {out_dir}: exists; certificates are never overwritten")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedicu federation CA")])
        ca_cert = _certificate("fedicu federation CA", ca_key.public_key(), ca_name, ca_key, 3650, ca=True, hosts=[])
        link_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        names = [*hosts, *(h for h in SUPERLINK_SELF if h not in hosts)]
        link_cert = _certificate(hosts[0], link_key.public_key(), ca_name, ca_key, 730, ca=False, hosts=names)
        files = {
            CA_CERT: ca_cert.public_bytes(serialization.Encoding.PEM),
            CA_KEY: _private_pem(ca_key),
            SUPERLINK_CERT: link_cert.public_bytes(serialization.Encoding.PEM),
            SUPERLINK_KEY: _private_pem(link_key),
        }
        for site in sites:
            key = ec.generate_private_key(ec.SECP384R1())
            files[f"{SITES_DIR}/{site}.key"] = key.private_bytes(  # the OpenSSH form the SuperNode reads
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            files[f"{SITES_DIR}/{site}.pub"] = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
        (staging / SITES_DIR).mkdir()
        for name, data in files.items():
            path = staging / name
            path.write_bytes(data)
            path.chmod(0o600 if name.endswith(".key") else 0o644)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / name for name in files]
