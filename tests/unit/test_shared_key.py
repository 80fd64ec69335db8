"""Shared Key signing against the reference sheet's vectors (section 6)."""

from __future__ import annotations

import pytest

from batch_dealloc_async import SharedKeyCredential
from batch_dealloc_async._auth import string_to_sign
from tests.conftest import REFERENCE_ACCOUNT, REFERENCE_DATE, REFERENCE_KEY

CT = "application/json; odata=minimalmetadata"
DEALLOC = "/pools/pool1/nodes/tvmps_abc_d/deallocate"
OCP = (("ocp-date", REFERENCE_DATE),)


def test_vector_1_deallocate_with_body() -> None:
    """Vector 1: POST deallocate with a 35-byte requeue body."""
    s = string_to_sign(
        "POST",
        REFERENCE_ACCOUNT,
        DEALLOC,
        [("api-version", "2025-06-01")],
        ocp_headers=OCP,
        content_length="35",
        content_type=CT,
    )
    assert s == (
        "POST\n\n\n35\n\napplication/json; odata=minimalmetadata\n\n\n\n\n\n\n"
        "ocp-date:Sun, 01 Jun 2025 12:00:00 GMT\n/myaccount/pools/pool1/nodes/tvmps_abc_d/deallocate\n"
        "api-version:2025-06-01"
    )
    assert SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY).signature(s) == (
        "FuTDXDtSCD3+sijnNMd5kTSdGHw2Eu41vuMfsWVyNg0="
    )


def test_vector_2_bodiless_post_signs_zero_length() -> None:
    """Vector 2: a bodiless POST signs Content-Length 0 and no Content-Type."""
    s = string_to_sign(
        "POST",
        REFERENCE_ACCOUNT,
        "/pools/pool1/nodes/tvmps_abc_d/start",
        [("api-version", "2025-06-01")],
        ocp_headers=OCP,
        content_length="0",
    )
    assert SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY).signature(s) == (
        "JhIDQWDnWygsj74SrJGThz3Rh2pqn2lJc13UZs9g/Rg="
    )


def test_vector_3_list_query_sorted_and_decoded() -> None:
    """Vector 3: GET with $filter/$select/maxresults signs decoded values sorted by name."""
    query = [
        ("api-version", "2025-06-01"),
        ("maxresults", "1000"),
        ("$filter", "state eq 'idle'"),
        ("$select", "id,state"),
    ]
    s = string_to_sign("GET", REFERENCE_ACCOUNT, "/pools/pool1/nodes", query, ocp_headers=OCP)
    assert s.endswith(
        "/myaccount/pools/pool1/nodes\n$filter:state eq 'idle'\n$select:id,state"
        "\napi-version:2025-06-01\nmaxresults:1000"
    )
    assert SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY).signature(s) == (
        "6LwCvq3G9teQCrpRZovgP4eh972cMCFM2RO2IjspRyQ="
    )


@pytest.mark.parametrize(
    ("lowercase", "expected"),
    [
        (True, "RdLopWKxjbCQ9qawRKJN0ewalxwJGDwqkfcKHxe61R0="),  # 4b: the docs and the Java SDK
        (False, "6yMVF5XKCIztKAc22MR4HkS4sugbdiwLu0BDQQsCyDk="),  # 4a: the Python SDK
    ],
)
def test_vector_4_timeout_query_name_casing(lowercase: bool, expected: str) -> None:
    """Vectors 4a/4b: timeOut is lower-cased in the canonical query by default, switchable to the SDK form."""
    s = string_to_sign(
        "POST",
        REFERENCE_ACCOUNT,
        DEALLOC,
        [("api-version", "2025-06-01"), ("timeOut", "30")],
        ocp_headers=OCP,
        content_length="35",
        content_type=CT,
        lowercase_query_names=lowercase,
    )
    assert SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY).signature(s) == expected


def test_authorization_header_shape() -> None:
    """The header is 'SharedKey account:signature'."""
    cred = SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY)
    assert cred.authorization("x").startswith("SharedKey myaccount:")


@pytest.mark.parametrize(
    ("name", "key"),
    [("", REFERENCE_KEY), ("my account", REFERENCE_KEY), ("a", ""), ("a", "not base64!"), ("a", "===")],
)
def test_bad_account_or_key_rejected_without_echoing_the_key(name: str, key: str) -> None:
    """Bad names or keys raise ValueError, and the message never contains the key."""
    with pytest.raises(ValueError) as info:
        SharedKeyCredential(name, key)
    assert not key or key not in str(info.value)


def test_repr_hides_the_key() -> None:
    """Repr shows the account, never the key."""
    text = repr(SharedKeyCredential(REFERENCE_ACCOUNT, REFERENCE_KEY))
    assert "myaccount" in text
    assert REFERENCE_KEY not in text
    assert REFERENCE_KEY[:10] not in text
