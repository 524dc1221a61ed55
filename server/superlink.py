"""The server's SuperLink: Flower's own, with only the Fleet API on the address factories dial.

``flower-superlink`` (flwr 1.42) serves three APIs on its one ``--host``/``--port``: the Fleet API
(factories' SuperNodes pull messages and push replies), the Control API (``flwr run``, ``ls``,
``stop``: submit, list and stop runs) and the runtime API (the ServerApp's own: it hands out the
server's tasks and carries a run's messages and every factory's reply). Open-source Flower
authenticates no Control API caller (``NoOpControlAuthnPlugin`` unless OIDC is on, and its plugin is
not in this distribution), and in its default subprocess isolation its runtime API asks for no
secret, so anyone who reached that port with the CA certificate could list, stop and submit runs, or
take a run's ServerApp task and read the factories' replies.

This module serves Flower's own application (``flwr.superlink.main.create_app``, one state, one
SuperExec) from one process on two addresses, both with Flower's TLS files: whole on the control
address (loopback unless ``fedmeta server`` was told by name to expose it), where the server's own
processes reach it (the `flwr` CLI of `fedmeta server`, the SuperExec, the ServerApp), and behind
`FleetOnly` on the public address, which answers every route but the Fleet API's with 404.

``python -m fedmeta.server.superlink --fleet-host HOST --fleet-port PORT FLOWER-SUPERLINK-OPTIONS``,
where Flower's own ``--host``/``--port`` are the control address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fedmeta.common.runtime.flower_pin import require_flower

__all__ = ["FLEET_ROUTE", "NOT_SERVED", "FleetOnly", "main"]

FLEET_ROUTE = re.compile(r"/v1/fleet/[a-z-]+")  # flwr 1.42's Fleet API: `flwr/superlink/routers/fleet/router.py`
NOT_SERVED = "not served on this port: it serves the Fleet API (/v1/fleet/) alone\n"


class FleetOnly:
    """An ASGI gate: requests for a Fleet API route go on to Flower's application, every other request
    (Control and runtime APIs, API docs, health, a websocket) is answered 404 and never reaches it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and FLEET_ROUTE.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await PlainTextResponse(NOT_SERVED, status_code=404)(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


class _FleetServer(uvicorn.Server):
    """The public listener: the control listener owns the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_server(app: ASGIApp, host: str, port: int, config: Any, *, public: bool) -> uvicorn.Server:
    """A uvicorn server of ``app`` on ``host:port`` with the SuperLink's TLS files and logging, as Flower's
    ``_run_superlink_http_api`` starts its one; the public one leaves the lifespan (which starts the
    SuperExec) to the control one."""
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler

    options = uvicorn.Config(
        app=app, host=host, port=port, reload=False, access_log=True, workers=1,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile, ssl_certfile=config.ssl_certfile, lifespan="off" if public else "on",
    )
    return _FleetServer(options) if public else uvicorn.Server(options)


async def _serve(control: uvicorn.Server, fleet: uvicorn.Server) -> None:
    fleet_task = asyncio.create_task(fleet.serve())
    try:
        await control.serve()
    finally:
        fleet.should_exit = True
        await fleet_task


def main() -> None:
    """``flower-superlink`` on two addresses (module docstring)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fleet-host", required=True)
    parser.add_argument("--fleet-port", type=int, required=True)
    ours, flower_options = parser.parse_known_args()
    require_flower("the SuperLink's split addresses")
    from flwr.common.logger import log
    from flwr.superlink.main import create_app

    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the package hides it

    sys.argv = ["flower-superlink", *flower_options]
    config = flower_superlink._parse_superlink_lifespan_config()
    app = create_app(config, flower_superlink.SuperLinkLifespan)
    control = _uvicorn_server(app, config.host, config.port, config, public=False)
    fleet = _uvicorn_server(FleetOnly(app), ours.fleet_host, ours.fleet_port, config, public=True)
    log(logging.INFO, "Fleet API alone on %s:%s; Control and runtime APIs on %s:%s",
        ours.fleet_host, ours.fleet_port, config.host, config.port)
    asyncio.run(_serve(control, fleet))


if __name__ == "__main__":
    main()
