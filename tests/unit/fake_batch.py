"""A fake Batch service behind the client's Exchange seam: pools of nodes, scripted answers, every request recorded."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDict

from batch_dealloc_async import ExchangeError, Reply

JSON = "application/json;odata=minimalmetadata"
Step = tuple[int, dict[str, str], str] | ExchangeError


def error_body(code: str) -> str:
    return json.dumps({"code": code, "message": {"lang": "en-US", "value": f"{code} happened"}})


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]


@dataclass
class FakeBatch:
    """Nodes by pool with their states; POST answers follow ``scripts[node]`` in order (then ``202``), GETs read.

    A deallocate or start that is answered 202 moves the node to ``deallocating`` or ``starting``.
    """

    pools: dict[str, dict[str, str]]
    scripts: dict[str, list[Step]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    counter: int = 0

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        *,
        expected: int,
        read_body: bool,
    ) -> Reply:
        del body, timeout, expected, read_body
        self.sent.append(Sent(method, url, dict(headers)))
        self.counter += 1
        parts = urlsplit(url)
        path = parts.path.strip("/").split("/")
        pool = self.pools.get(path[1])
        if pool is None:
            return self._reply((404, {}, error_body("PoolNotFound")))
        if method == "GET" and len(path) == 3:
            query = dict(p.split("=", 1) for p in parts.query.split("&"))
            nodes = [{"id": n, "state": s} for n, s in pool.items() if _matches(unquote(query.get("$filter", "")), s)]
            return self._reply((200, {"Content-Type": JSON}, json.dumps({"value": nodes})))
        node = path[3]
        if node not in pool:
            return self._reply((404, {}, error_body("NodeNotFound")))
        if method == "GET":
            return self._reply((200, {"Content-Type": JSON}, json.dumps({"id": node, "state": pool[node]})))
        script = self.scripts.get(node, [])
        step = script.pop(0) if script else (202, {}, "")
        if isinstance(step, ExchangeError):
            if step.sent:
                pool[node] = "deallocating" if path[4] == "deallocate" else "starting"
            raise step
        if step[0] == 202:
            pool[node] = "deallocating" if path[4] == "deallocate" else "starting"
        return self._reply(step)

    def _reply(self, step: tuple[int, dict[str, str], str]) -> Reply:
        status, headers, text = step
        if status >= 400 and "Content-Type" not in headers:
            headers = {**headers, "Content-Type": JSON}
        return Reply(status, CIMultiDict({"request-id": f"svc-{self.counter}", **headers}), text.encode())


def _matches(filter_: str, state: str) -> bool:
    """The two shapes of ``$filter`` the client sends: ``(state eq 'a') or ...`` and ``(state ne 'a') and ...``."""
    if not filter_:
        return True
    states = re.findall(r"'(\w+)'", filter_)
    return state in states if " eq " in filter_ else state not in states
