"""Every factory's public key registered with the SuperLink from one process.

``flwr supernode register`` registers one key a process, and each process imports Flower first (about a
second on 2 cores): a server with 100 factories spent 90 s registering keys at every start, the keys its
database already held included. `register_keys` sends what that command sends (Flower's Control API client,
its TLS and interceptors, from the ``flwr`` CLI's own connection settings) for every key over one client.
`fedmeta server` runs it as ``python -m fedmeta.server.key_registration CONNECTION KEY...`` in its private
``FLWR_HOME`` and reads one JSON line a key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from fedmeta.common.runtime.flower_pin import require_flower
from fedmeta.common.security.credentials import CredentialError, load_factory_public_key

__all__ = ["ALREADY_REGISTERED", "register_keys"]

ALREADY_REGISTERED = "registered before"


def register_keys(connection: str, keys: Sequence[Path]) -> Iterator[dict[str, object]]:
    """For each key, ``{"key", "node-id"}`` once registered, or ``{"key", "error"}``: `ALREADY_REGISTERED` for a
    key the SuperLink's database holds, else the reason."""
    require_flower("the registration of factory keys")
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=E0611
    from flwr.supercore.error.base import ApiErrorCode, FlowerError
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    client = init_http_client_from_connection(read_superlink_connection(connection))
    try:
        for key in keys:
            try:
                public_key = public_key_to_bytes(load_factory_public_key(key))
            except CredentialError as error:  # named; the other keys go on
                yield {"key": str(key), "error": str(error)}
                continue
            try:
                response = client.RegisterNode(RegisterNodeRequest(public_key=public_key))
            except httpx.HTTPStatusError as error:
                flower_error = FlowerError.from_json(error.response.text)
                if flower_error is not None and flower_error.code == ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE:
                    yield {"key": str(key), "error": ALREADY_REGISTERED}
                else:
                    yield {"key": str(key), "error": str(flower_error or error)}
                continue
            yield {"key": str(key), "node-id": response.node_id}
    finally:
        client.close()


def main(argv: Sequence[str]) -> int:
    connection, *keys = argv
    for outcome in register_keys(connection, [Path(key) for key in keys]):
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
