from jetbook.wiring import split_url


def test_plain_url() -> None:
    assert split_url("nats://127.0.0.1:4222") == (["nats://127.0.0.1:4222"], {})


def test_credentials_leave_the_url_and_apply_to_every_server() -> None:
    servers, auth = split_url("nats://engine:s%40cret@n1:14222,nats://n2:14223, n3:14224")
    assert servers == ["nats://n1:14222", "nats://n2:14223", "nats://n3:14224"]
    assert auth == {"user": "engine", "password": "s@cret"}


def test_token_and_default_port() -> None:
    assert split_url("tls://tok3n@host") == (["tls://host:4222"], {"token": "tok3n"})
