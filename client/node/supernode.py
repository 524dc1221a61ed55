"""A factory's SuperNode: Flower's own, that runs only the federation's app, with this project's timings.

Flower's SuperNode runs whatever app a run brings: the first message of a run it has not seen makes it
fetch the run's app bundle (FAB) from the server and store it, and its app processes then install and
import that bundle's code. `guard_runs` checks the bundle at that point, in ``_pull_and_store_message``
(``flwr/supernode/start_client_internal.py``), before it is stored and before any task exists, so it
holds with either isolation: a bundle that is not the app this factory installed, or not the release
its policy pins (``app_version``; `common.federation.app_identity.bundle_refusal`), gets an error reply naming
the run and the reason, and a log line; nothing of it runs. Flower's own check, ``--trusted-entities``,
accepts only bundles that Flower's app platform signed (``valid_license``), which a federation's own
SuperLink never sets.

``python -m fedmeta.client.node.supernode [--flower-timings] FLOWER-SUPERNODE-OPTIONS`` runs Flower's
``flower-supernode`` entry point with the guard, the loop's repairs of `client.node.supernode_loop` and, unless
``--flower-timings``, the shorter waits of `client.node.supernode_timings`. Like those, the guard refuses any
Flower but `common.runtime.flower_pin`'s.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Mapping
from typing import Any

from fedmeta.client.node import supernode_loop, supernode_timings
from fedmeta.client.rounds.policy import POLICY_KEY, load_policy
from fedmeta.common.federation.app_identity import bundle_refusal
from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged, require_flower

__all__ = ["REFUSED", "ForeignApp", "app_refusal", "guard_runs", "main"]

REFUSED = "refused run"  # how the log line of a refused run begins its reason (`client.node.deployment` reads it)
_PULL_PARAMETERS = {"state", "object_store", "node_config", "receive", "get_fab"}


class ForeignApp(Exception):
    """A run's app bundle is not the one this factory runs; the message says why."""


def app_refusal(fab_content: bytes, node_config: Mapping[str, Any]) -> str | None:
    """Why this factory does not run the bundle, or None: it must be the installed app, in the release
    the factory's policy pins (read now: a policy edited while the factory runs applies to the next run)."""
    pinned = None
    if POLICY_KEY in node_config:
        try:
            pinned = load_policy(str(node_config[POLICY_KEY])).app_version
        except ValueError as error:
            return str(error)
    return bundle_refusal(fab_content, pinned)


def _refuse(message: Any, reason: str, kwargs: Mapping[str, Any]) -> int:
    """Answer ``message`` with Flower's invalid-bundle error naming the run and ``reason``; its run id."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode
    from flwr.common.logger import log
    from flwr.supernode import start_client_internal

    run_id = message.metadata.run_id
    factory = kwargs["node_config"].get("factory", "this factory")
    text = f"factory {factory} {REFUSED} {run_id}: its app is not the one installed here: {reason}"
    log(logging.ERROR, text)
    reply = Message(Error(ErrorCode.INVALID_FAB, text), reply_to=message)
    start_client_internal._insert_message(reply, kwargs["state"], kwargs["object_store"])
    return run_id


def guard_runs() -> None:
    """Check every new run's bundle in this process's SuperNode before it is stored (module docstring)."""
    require_flower("the SuperNode's app guard")
    from flwr.supernode import start_client_internal

    pull = start_client_internal._pull_and_store_message
    missing = _PULL_PARAMETERS - set(inspect.signature(pull).parameters)
    if missing or not hasattr(start_client_internal, "_insert_message"):
        raise FlowerInternalsChanged(f"flwr's start_client_internal no longer pulls a run's bundle where the app "
                                     f"guard checks it (missing: {sorted(missing) or '_insert_message'})")

    def guarded_pull(**kwargs: Any) -> int | None:
        receive, received = supernode_loop.recording(kwargs["receive"])

        def get_fab(fab_hash: str, run_id: int) -> Any:
            fab = kwargs["get_fab"](fab_hash, run_id)
            if (reason := app_refusal(fab.content, kwargs["node_config"])) is not None:
                raise ForeignApp(reason)
            return fab

        try:
            return pull(**{**kwargs, "receive": receive, "get_fab": get_fab})
        except ForeignApp as refusal:
            return _refuse(received[-1], str(refusal), kwargs)

    start_client_internal._pull_and_store_message = guarded_pull


def main() -> None:
    """``flower-supernode`` (its options as they are) with the app guard and, by default, the project's timings."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--flower-timings", action="store_true")
    ours, flower_options = parser.parse_known_args()
    guard_runs()
    supernode_loop.repair()
    if not ours.flower_timings:
        supernode_timings.apply()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_options]
    flower_supernode()


if __name__ == "__main__":
    main()
