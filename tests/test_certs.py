"""Deployment certificates: a TLS handshake succeeds with the CA and fails without it."""

import socket
import ssl
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedicu.simulations.cli import main
from fedicu.simulations.deployment.certs import create


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs") / "federation"
    create(out, ["127.0.0.1", "localhost"], ["st-mary", "general"])
    return out


def _handshake(bundle, client_context: ssl.SSLContext, server_name: str) -> None:
    """Serve one TLS connection on loopback with the SuperLink certificate."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(bundle / "superlink.crt", bundle / "superlink.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client refused us: that is what some tests expect

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client_context.wrap_socket(raw, server_hostname=server_name):
                pass
    finally:
        thread.join(timeout=5)
        listener.close()


def test_a_site_with_the_ca_trusts_the_superlink_by_ip_and_name(bundle):
    context = ssl.create_default_context(cafile=bundle / "ca.crt")
    _handshake(bundle, context, "127.0.0.1")
    _handshake(bundle, context, "localhost")


def test_the_superlink_certificate_always_holds_loopback_where_the_superlink_dials_itself(tmp_path):
    create(tmp_path / "named", ["superlink.example.org"], ["st-mary"])
    context = ssl.create_default_context(cafile=tmp_path / "named" / "ca.crt")
    _handshake(tmp_path / "named", context, "superlink.example.org")
    _handshake(tmp_path / "named", context, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path / "named", context, "other.example.org")


def test_a_client_without_the_ca_cannot_connect(bundle):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(bundle, ssl.create_default_context(), "127.0.0.1")


def test_a_name_the_certificate_does_not_hold_is_refused(bundle):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(bundle, ssl.create_default_context(cafile=bundle / "ca.crt"), "superlink.example.org")


def test_each_site_gets_its_own_p384_key_pair_readable_as_flower_reads_it(bundle):
    publics = set()
    for site in ("st-mary", "general"):
        private = serialization.load_ssh_private_key((bundle / "sites" / f"{site}.key").read_bytes(), password=None)
        public = serialization.load_ssh_public_key((bundle / "sites" / f"{site}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
        assert private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (bundle / "sites" / f"{site}.key").stat().st_mode & 0o077 == 0  # private keys: owner only
        publics.add(public.public_numbers())
    assert len(publics) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--site", "a b"], "--site 'a b': use letters"),
        (["--site", "x", "--site", "x"], "given twice"),
    ],
)
def test_bad_requests_fail_before_anything_is_written(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["fedicu", "certs", "--out", str(tmp_path / "c"), "--host", "127.0.0.1", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_overwritten(bundle):
    before = (bundle / "ca.key").read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        create(bundle, ["127.0.0.1"], ["other"])
    assert (bundle / "ca.key").read_bytes() == before
