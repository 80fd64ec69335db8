"""A scripted fake service for aioresponses: answers in order and records every request."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiohttp import ClientResponse
from aioresponses import CallbackResult, aioresponses
from multidict import CIMultiDict
from yarl import URL

ANY_URL = re.compile(r".*")


class CompatResponse(ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` (pnuckowski/aioresponses#289)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


def batch_error(code: str, message: str = "it failed") -> str:
    return json.dumps(
        {
            "odata.metadata": "https://x/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": code,
            "message": {"lang": "en-US", "value": f"{message}\nRequestId:abc\nTime:2025-06-01T12:00:00.0000000Z"},
            "values": [{"key": "Reason", "value": code}],
        }
    )


@dataclass
class Seen:
    method: str
    url: URL
    headers: CIMultiDict[str]
    data: bytes | None


@dataclass
class Script:
    """Each step is (status, headers, body) or an exception to raise; the last step repeats."""

    steps: list[Any]
    seen: list[Seen] = field(default_factory=list)
    method: str = "POST"

    def __call__(self, url: URL, **kwargs: Any) -> CallbackResult:
        self.seen.append(Seen(self.method, url, CIMultiDict(kwargs.get("headers") or {}), kwargs.get("data")))
        step = self.steps[min(len(self.seen) - 1, len(self.steps) - 1)]
        if isinstance(step, BaseException):
            raise step
        status, headers, body = step
        return CallbackResult(status=status, headers=headers, body=body, response_class=CompatResponse)

    def install(self, mock: aioresponses, method: str = "POST") -> Script:
        self.method = method
        mock.add(ANY_URL, method=method, callback=self, repeat=True, response_class=CompatResponse)
        return self


def accepted(**headers: str) -> tuple[int, dict[str, str], str]:
    base = {
        "request-id": "req-1",
        "ETag": "0x8DDA0",
        "Last-Modified": "Sun, 01 Jun 2025 12:00:00 GMT",
        "DataServiceId": "https://myaccount.westus.batch.azure.com/pools/pool1/nodes/n1",
    }
    base.update(headers)
    return (202, base, "")


def error(status: int, code: str, **headers: str) -> tuple[int, dict[str, str], str]:
    return (status, {"request-id": f"req-{status}", **headers}, batch_error(code))
