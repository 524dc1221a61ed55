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

Flower's SuperNode loop pairs replies with pulls: after each message it pulls, it sends the replies waiting
in its state, and it sends nothing after a pull that found no message. A reply can be left with no pull of its
own: when the server stops while the node is still confirming a message, the node gives that message up ("Run
... is not in RUNNING status. Ignoring message"), but the task it made for it runs on and replies. That reply
went out after the next message was pulled (to the restarted server, a query), in that message's stead, and from
then on every reply went out one message late: the restarted server never heard the factory's answers.
`deliver_stranded_replies` makes a pull that finds no message send any reply that is waiting.

``python -m fedmeta.client.node.supernode [--flower-timings] FLOWER-SUPERNODE-OPTIONS`` runs Flower's
``flower-supernode`` entry point with the guard, stranded replies delivered and, unless ``--flower-timings``,
the shorter waits of `client.node.supernode_timings`. Like those, both refuse any Flower but
`common.runtime.flower_pin`'s.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Mapping
from typing import Any

from fedmeta.client.node import supernode_timings
from fedmeta.client.rounds.policy import POLICY_KEY, load_policy
from fedmeta.common.federation.app_identity import bundle_refusal
from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged, require_flower

__all__ = ["REFUSED", "ForeignApp", "app_refusal", "deliver_stranded_replies", "guard_runs", "main"]

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
        received: list[Any] = []

        def receive() -> Any:
            pulled = kwargs["receive"]()
            if pulled is not None:
                received.append(pulled[0])
            return pulled

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


def _waiting_reply_run(state: Any) -> int | None:
    """The run of a reply in the node's state that no one has taken to send yet, or None; reads the state's
    store as ``get_messages_legacy`` does, without marking what it finds as taken."""
    with state.lock_msg_store:
        for entry in state.msg_store.values():
            if not entry.is_retrieved and entry.message.metadata.reply_to_message_id:
                return int(entry.message.metadata.run_id)
    return None


def deliver_stranded_replies() -> None:
    """After a pull that found no message, send the replies waiting in the node's state (module docstring):
    the pull then answers with their run, and Flower's loop goes on to send every waiting reply."""
    require_flower("the SuperNode's delivery of stranded replies")
    from flwr.supernode import start_client_internal
    from flwr.supernode.nodestate import in_memory_nodestate

    state_source = inspect.getsource(in_memory_nodestate.InMemoryNodeState.__init__)
    holds = all(name in state_source for name in ("self.msg_store", "self.lock_msg_store")) and \
        "is_retrieved" in getattr(in_memory_nodestate.MessageEntry, "__dataclass_fields__", {})
    if not holds:
        raise FlowerInternalsChanged("flwr's InMemoryNodeState no longer keeps its messages where stranded replies "
                                     "are looked for (msg_store, lock_msg_store, MessageEntry.is_retrieved)")
    pull = start_client_internal._pull_and_store_message

    def pull_or_deliver(**kwargs: Any) -> int | None:
        run_id = pull(**kwargs)
        return _waiting_reply_run(kwargs["state"]) if run_id is None else run_id

    start_client_internal._pull_and_store_message = pull_or_deliver


def main() -> None:
    """``flower-supernode`` (its options as they are) with the app guard and, by default, the project's timings."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--flower-timings", action="store_true")
    ours, flower_options = parser.parse_known_args()
    guard_runs()
    deliver_stranded_replies()
    if not ours.flower_timings:
        supernode_timings.apply()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_options]
    flower_supernode()


if __name__ == "__main__":
    main()
