"""credential_from_environment: the credential the environment names, in the CLI's order, and its errors."""

from __future__ import annotations

import pytest

from batch_dealloc_async import (
    CertificateCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    SharedKeyCredential,
    credential_from_environment,
)

KEY = "c2VjcmV0LWtleS1ub3QtaW4tbWVzc2FnZXM="  # base64 of a key that must never show in a message
PRINCIPAL = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"}


def test_shared_key_comes_first() -> None:
    environ = {"BATCH_ACCOUNT_NAME": "acct", "BATCH_ACCOUNT_KEY": KEY, **PRINCIPAL, "AZURE_CLIENT_SECRET": "s"}
    credential = credential_from_environment(environ)
    assert isinstance(credential, SharedKeyCredential)
    assert credential.account_name == "acct"


def test_arguments_override_the_variables() -> None:
    credential = credential_from_environment({"BATCH_ACCOUNT_NAME": "env"}, account_name="arg", account_key=KEY)
    assert isinstance(credential, SharedKeyCredential)
    assert credential.account_name == "arg"


def test_a_service_principal_secret_then_its_certificate() -> None:
    secret = credential_from_environment({**PRINCIPAL, "AZURE_CLIENT_SECRET": "s"})
    certificate = credential_from_environment({**PRINCIPAL, "AZURE_CLIENT_CERTIFICATE_PATH": "/nowhere/cert.pem"})
    assert isinstance(secret, ClientSecretCredential)
    assert isinstance(certificate, CertificateCredential)  # the file is read when the first token is needed


def test_managed_identity_when_asked_whatever_else_is_set() -> None:
    environ = {"BATCH_ACCOUNT_NAME": "acct", "BATCH_ACCOUNT_KEY": KEY, "AZURE_CLIENT_ID": "user-assigned"}
    credential = credential_from_environment(environ, managed_identity=True)
    assert isinstance(credential, ManagedIdentityCredential)
    assert credential.client_id == "user-assigned"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCH_ACCOUNT_NAME", "from-os")
    monkeypatch.setenv("BATCH_ACCOUNT_KEY", KEY)
    credential = credential_from_environment()
    assert isinstance(credential, SharedKeyCredential)
    assert credential.account_name == "from-os"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "no credentials: set BATCH_ACCOUNT_NAME and BATCH_ACCOUNT_KEY"),
        ({"BATCH_ACCOUNT_NAME": "acct"}, "no credentials"),
        ({"BATCH_ACCOUNT_KEY": KEY}, "BATCH_ACCOUNT_KEY is set but not BATCH_ACCOUNT_NAME"),
        ({**PRINCIPAL}, "no credentials"),
        ({"BATCH_ACCOUNT_NAME": "acct", "BATCH_ACCOUNT_KEY": "not base64!" + KEY}, "bad credential settings"),
    ],
)
def test_nothing_usable_is_a_clear_value_error_without_secrets(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        credential_from_environment(environ)
    assert KEY not in str(caught.value)
