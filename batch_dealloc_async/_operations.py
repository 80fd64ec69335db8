"""The node operations: act on one node (deallocate), read one node, list a pool's nodes.

Each is a request from the :class:`~._request.RequestFactory`, sent through the :class:`~._transport.Transport`,
and its answer read into a model. The one service rule that needs two requests lives here: a ``409`` after an
ambiguous attempt (a timeout, a reset, a 5xx) is checked with Get Node, because the earlier attempt may have
worked.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import cattrs

from . import _request as rq
from ._converter import load_model
from ._errors import BatchDeallocError, ConflictError
from ._models import BatchNode, BatchNodeListResult, DeallocateResult, StartResult
from ._transport import Call

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine

    from ._actions import NodeAction
    from ._http import Reply
    from ._outcomes import ClientStats
    from ._transport import Transport

__all__ = ["BulkOperations", "NodeOperations"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class NodeOperations:
    """The node operations of one client.

    Args:
        transport: Sends every request.
        requests: Builds every request.
    """

    __slots__ = ("_requests", "_transport")

    def __init__(self, transport: Transport, requests: rq.RequestFactory) -> None:
        self._transport = transport
        self._requests = requests

    async def act(
        self,
        action: NodeAction,
        pool_id: str,
        node_id: str,
        *,
        body: bytes | None = None,
        service_timeout: int | None = None,
        client_request_id: str | None = None,
        echo: bool = True,
        ocp_date: float | None = None,
        run: ClientStats | None = None,
    ) -> DeallocateResult | StartResult:
        """Perform ``action`` on one node (arguments already checked): retries, then the 409 reconciliation.

        Raises:
            ConflictError: the node is not in a state the action allows, and no earlier ambiguous attempt of this
                call explains it.
            BatchDeallocError: the other failures, after retries.
        """
        request = self._requests.node_action(pool_id, node_id, action.verb, body, service_timeout)
        call = Call(
            f"{action.verb} {pool_id}/{node_id}",
            client_request_id=client_request_id,
            run=run,
            echo=echo,
            ocp_date=ocp_date,
        )
        try:
            reply = await self._transport.send(request, call, expected=202, service_timeout=service_timeout)
        except ConflictError as conflict:
            if not call.ambiguous:
                raise
            reply = await self._confirm(action, pool_id, node_id, call, conflict)
            return self._result(action, pool_id, node_id, call, reply, reconciled=True)
        return self._result(action, pool_id, node_id, call, reply, reconciled=False)

    async def _confirm(
        self, action: NodeAction, pool_id: str, node_id: str, call: Call, conflict: ConflictError
    ) -> Reply:
        """An earlier attempt may have worked: a 409 then means 'already done', not failure, if the state says so."""
        _log.debug(
            "%s: 409 after an ambiguous attempt; confirming the node's state (client-request-id %s)",
            call.what,
            call.client_request_id,
        )
        try:
            node, reply = await self._get(pool_id, node_id, run=call.run)
        except BatchDeallocError as exc:
            _log.debug("%s: the node's state could not be read (%s); the 409 stands", call.what, exc)
            if call.trace is not None:
                call.trace.event("reconciliation", {"batch.reconciled": False, "error.type": type(exc).__name__})
            raise conflict from None
        reconciled = node.state in action.confirming
        _log.debug(
            "%s: the node is %s; the earlier attempt %s", call.what, node.state, "worked" if reconciled else "did not"
        )
        if call.trace is not None:
            call.trace.event("reconciliation", {"batch.reconciled": reconciled, "batch.node.state": node.state or ""})
        if not reconciled:
            raise conflict
        return reply

    def _result(
        self, action: NodeAction, pool_id: str, node_id: str, call: Call, reply: Reply, *, reconciled: bool
    ) -> DeallocateResult | StartResult:
        """The one place an accepted action becomes a result (and is counted)."""
        stats = self._transport.stats
        stats.accepted += 1
        if call.run is not None:
            call.run.accepted += 1
        headers = reply.headers
        return action.result(
            pool_id=pool_id,
            node_id=node_id,
            request_id=headers.get("request-id") or None,
            client_request_id=call.client_request_id,
            etag=headers.get("ETag") or None,
            last_modified=rq.parse_http_date_cached(headers.get("Last-Modified")),
            data_service_id=headers.get("DataServiceId") or None,
            attempts=call.attempts,
            reconciled=reconciled,
        )

    async def get_node(
        self,
        pool_id: str,
        node_id: str,
        *,
        select: str | None = rq.STATE_SELECT,
        service_timeout: int | None = None,
        run: ClientStats | None = None,
    ) -> BatchNode:
        """Read one node (arguments already checked)."""
        node, _ = await self._get(pool_id, node_id, select=select, service_timeout=service_timeout, run=run)
        return node

    async def _get(
        self,
        pool_id: str,
        node_id: str,
        *,
        select: str | None = rq.STATE_SELECT,
        service_timeout: int | None = None,
        run: ClientStats | None,
    ) -> tuple[BatchNode, Reply]:
        request = self._requests.get_node(pool_id, node_id, select=select, timeout=service_timeout)
        call = Call(f"get {pool_id}/{node_id}", run=run)
        reply = await self._transport.send(request, call, expected=200, service_timeout=service_timeout)
        return _parse(reply.body, BatchNode, call), reply

    async def list_nodes(
        self,
        pool_id: str,
        *,
        filter_: str | None,
        select: str | None = rq.STATE_SELECT,
        page_size: int = rq.MAX_PAGE_SIZE,
        service_timeout: int | None = None,
        run: ClientStats | None = None,
    ) -> AsyncIterator[BatchNode]:
        """Every node of the pool matching ``filter_``, page by page (``odata.nextLink``), arguments checked."""
        request = self._requests.list_nodes(
            pool_id, filter_=filter_, select=select, page_size=page_size, timeout=service_timeout
        )
        while True:
            call = Call(f"list {pool_id}", run=run)
            reply = await self._transport.send(request, call, expected=200, service_timeout=service_timeout)
            page = _parse(reply.body, BatchNodeListResult, call)
            for node in page.value:
                yield node
            if not page.odata_next_link:
                return
            try:
                request = self._requests.next_page(page.odata_next_link)
            except ValueError as exc:
                raise call.transport_error(str(exc)) from None


@attrs.frozen
class BulkOperations:
    """The three operations a bulk run needs, with the run's action, body and timeout bound.

    It satisfies the bulk engine's ``NodeBackend`` protocol structurally: the engine never imports this module.
    """

    operations: NodeOperations
    action: NodeAction
    body: bytes | None
    service_timeout: int | None

    def perform(
        self, pool_id: str, node_id: str, run: ClientStats
    ) -> Coroutine[Any, Any, DeallocateResult | StartResult]:
        """The run's action on one node (the action's own coroutine: no frame of its own to resume)."""
        return self.operations.act(
            self.action, pool_id, node_id, body=self.body, service_timeout=self.service_timeout, run=run
        )

    async def read_state(self, pool_id: str, node_id: str, run: ClientStats) -> str | None:
        """The node's state now."""
        node = await self.operations.get_node(pool_id, node_id, run=run)
        return node.state

    def list_nodes(self, pool_id: str, filter_: str, run: ClientStats) -> AsyncIterator[BatchNode]:
        """The pool's nodes matching ``filter_`` (id and state only)."""
        return self.operations.list_nodes(pool_id, filter_=filter_, run=run)


def _parse(body: bytes, cls: type[_T], call: Call) -> _T:
    try:
        return load_model(json.loads(body), cls)
    except (ValueError, TypeError, RecursionError, cattrs.BaseValidationError) as exc:
        raise call.transport_error(f"the response body is not a valid {cls.__name__} ({type(exc).__name__})") from None
