"""Configuration from the environment, HashiCorp conventions first."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from reconciler.clients.config import (
    AWSConfig,
    ClientsConfig,
    ConsulConfig,
    NomadConfig,
    TLSConfig,
    parse_bool,
)
from reconciler.clients.errors import ConfigError


def test_consul_defaults() -> None:
    cfg = ConsulConfig.from_env({})
    assert (cfg.scheme, cfg.host, cfg.port) == ("http", "127.0.0.1", 8500)
    assert cfg.base_url == "http://127.0.0.1:8500"
    assert cfg.token is None
    assert cfg.tls.verify is True


@pytest.mark.parametrize(
    ("addr", "ssl_flag", "expected"),
    [
        ("10.0.0.5:8501", "", "http://10.0.0.5:8501"),
        ("consul.local", "", "http://consul.local:8500"),
        ("https://consul.local:8501", "", "https://consul.local:8501"),
        ("https://consul.local", "", "https://consul.local:443"),
        ("10.0.0.5:8501", "true", "https://10.0.0.5:8501"),
        ("10.0.0.5:8501", "1", "https://10.0.0.5:8501"),
        # A scheme written in the address wins over CONSUL_HTTP_SSL, as in Consul's Go API.
        ("http://10.0.0.5:8500", "true", "http://10.0.0.5:8500"),
        ("[::1]:8500", "", "http://[::1]:8500"),
    ],
)
def test_consul_address_forms(addr: str, ssl_flag: str, expected: str) -> None:
    env = {"CONSUL_HTTP_ADDR": addr, "CONSUL_HTTP_SSL": ssl_flag}
    assert ConsulConfig.from_env(env).base_url == expected


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CONSUL_HTTP_ADDR": "ftp://x:1"}, "scheme"),
        ({"CONSUL_HTTP_ADDR": "x:notaport"}, "port"),
        ({"CONSUL_HTTP_ADDR": "x:99999"}, "port"),
        ({"CONSUL_HTTP_ADDR": "http://x:8500/v1"}, "path"),
        ({"CONSUL_HTTP_ADDR": "unix:///tmp/consul.sock"}, "unix"),
        ({"CONSUL_HTTP_SSL": "yes"}, "CONSUL_HTTP_SSL"),
        ({"CONSUL_HTTP_SSL_VERIFY": "nope"}, "CONSUL_HTTP_SSL_VERIFY"),
        ({"CONSUL_CACERT": "/does/not/exist.pem"}, "CONSUL_CACERT"),
        ({"CONSUL_CAPATH": "/does/not/exist"}, "CONSUL_CAPATH"),
        ({"CONSUL_HTTP_TOKEN_FILE": "/does/not/exist"}, "CONSUL_HTTP_TOKEN_FILE"),
    ],
)
def test_consul_invalid_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ConsulConfig.from_env(env)


def test_consul_token_and_token_file(tmp_path: Path) -> None:
    assert ConsulConfig.from_env({"CONSUL_HTTP_TOKEN": "s3cret"}).token == "s3cret"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"CONSUL_HTTP_TOKEN": "s3cret", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert ConsulConfig.from_env(env).token == "from-file"
    token_file.write_text("  \n")
    assert ConsulConfig.from_env(env).token == "s3cret"


def test_tokens_never_appear_in_repr() -> None:
    consul = ConsulConfig.from_env({"CONSUL_HTTP_TOKEN": "consul-s3cret"})
    nomad = NomadConfig.from_env({"NOMAD_TOKEN": "nomad-s3cret"})
    both = ClientsConfig(consul=consul, nomad=nomad, aws=AWSConfig())
    for text in (repr(consul), str(consul), repr(nomad), repr(both)):
        assert "s3cret" not in text
    assert consul.has_token
    assert nomad.has_token


def test_client_key_without_cert_is_rejected(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("x")
    with pytest.raises(ConfigError, match="CONSUL_CLIENT_CERT"):
        ConsulConfig.from_env({"CONSUL_CLIENT_KEY": str(key)})


def test_tls_settings_are_read(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a cert")
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    key = tmp_path / "k.pem"
    key.write_text("x")
    env = {
        "CONSUL_HTTP_ADDR": "https://consul:8501",
        "CONSUL_CACERT": str(ca),
        "CONSUL_CLIENT_CERT": str(cert),
        "CONSUL_CLIENT_KEY": str(key),
        "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
        "CONSUL_HTTP_SSL_VERIFY": "false",
        "CONSUL_DATACENTER": "dc2",
    }
    cfg = ConsulConfig.from_env(env)
    assert cfg.tls == TLSConfig(
        ca_cert=str(ca),
        client_cert=str(cert),
        client_key=str(key),
        server_name="server.dc1.consul",
        verify=False,
    )
    assert cfg.datacenter == "dc2"


def test_ssl_context_without_verification_and_with_bad_client_cert(tmp_path: Path) -> None:
    assert TLSConfig(verify=False).ssl_context() is False
    ctx = TLSConfig().ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage")
    with pytest.raises(ConfigError, match="client certificate"):
        TLSConfig(client_cert=str(bad)).ssl_context()


def test_nomad_from_env() -> None:
    assert NomadConfig.from_env({}).address == "http://127.0.0.1:4646"
    cfg = NomadConfig.from_env(
        {
            "NOMAD_ADDR": "https://nomad.example:4646",
            "NOMAD_TOKEN": "tok",
            "NOMAD_REGION": "eu",
            "NOMAD_NAMESPACE": "manticore",
            "NOMAD_SKIP_VERIFY": "true",
        }
    )
    assert cfg.address == "https://nomad.example:4646"
    assert (cfg.token, cfg.region, cfg.namespace) == ("tok", "eu", "manticore")
    assert cfg.tls.verify is False
    assert NomadConfig.from_env({"NOMAD_ADDR": "10.1.1.1:4646"}).address == "http://10.1.1.1:4646"
    with pytest.raises(ConfigError, match="NOMAD_ADDR"):
        NomadConfig.from_env({"NOMAD_ADDR": "http://:4646"})


def test_aws_region_precedence() -> None:
    assert AWSConfig.from_env({}).region is None
    assert AWSConfig.from_env({"AWS_DEFAULT_REGION": "us-west-2"}).region == "us-west-2"
    env = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2", "AWS_PROFILE": "ops"}
    cfg = AWSConfig.from_env(env)
    assert (cfg.region, cfg.profile) == ("eu-west-1", "ops")
    with pytest.raises(ConfigError, match="AWS_REGION"):
        AWSConfig.from_env({"AWS_REGION": "eu west 1"})


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("True", True), ("f", False), ("FALSE", False)]
)
def test_parse_bool_follows_go(raw: str, expected: bool) -> None:
    assert parse_bool("X", raw) is expected


def test_clients_config_reads_everything() -> None:
    cfg = ClientsConfig.from_env(
        {"CONSUL_HTTP_ADDR": "c:1", "NOMAD_ADDR": "http://n:2", "AWS_REGION": "us-east-1"}
    )
    assert cfg.consul.base_url == "http://c:1"
    assert cfg.nomad.address == "http://n:2"
    assert cfg.aws.region == "us-east-1"
