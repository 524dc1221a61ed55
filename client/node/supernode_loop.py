"""Flower's SuperNode loop, kept in step with its replies when the server stops mid-message.

flwr 1.42.0's loop (``flwr/supernode/start_client_internal.py``) pulls a message, stores it, makes a task for
it, pulls the message's objects and confirms it; after each message it pulled, it sends the replies waiting
in its state. When the server stops the run while the node is still pulling or confirming (a server stopped
mid-round and restarted with ``--resume``), the SuperLink answers "run not running", and Flower raises
``RunNotRunningException``, a ``BaseException``: it passes the ``except Exception`` that would delete the
message and fail its task, and the loop only logs "Ignoring message". Two faults followed, both seen in the
loopback test of a resumed server:

- The task stays. A warm worker (``--isolation process``) claims it and waits, for up to 80 minutes, for
  objects that never come, and answers nothing else: the restarted server found no factories. Here: the
  message, its objects and its run's unfinished tasks are dropped, as Flower drops a message whose objects
  failed to arrive (`forget_given_up_messages`).
- A task that had all it needed replies. That reply has no pull of its own, so it went out after the next
  message was pulled (the restarted server's query), in that message's stead, and from then on every reply
  went out one message late. Here: a pull that finds no message sends any reply that waits
  (`deliver_stranded_replies`).

`repair` applies both in this process; like `client.node.supernode_timings`, it refuses any Flower but
`common.runtime.flower_pin`'s and names an internal that moved.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged, require_flower

__all__ = ["deliver_stranded_replies", "forget_given_up_messages", "recording", "repair"]

GIVEN_UP = "the run stopped while this node received its message"


def recording(receive: Callable[[], Any]) -> tuple[Callable[[], Any], list[Any]]:
    """``receive`` as the loop calls it, and the list of the messages it returned (for a wrapper of the pull)."""
    received: list[Any] = []

    def recorded() -> Any:
        pulled = receive()
        if pulled is not None:
            received.append(pulled[0])
        return pulled

    return recorded, received


def _check_state() -> None:
    from flwr.supernode.nodestate import in_memory_nodestate

    source = inspect.getsource(in_memory_nodestate.InMemoryNodeState.__init__)
    fields = getattr(in_memory_nodestate.MessageEntry, "__dataclass_fields__", {})
    if not all(name in source for name in ("self.msg_store", "self.lock_msg_store")) or "is_retrieved" not in fields:
        raise FlowerInternalsChanged("flwr's InMemoryNodeState no longer keeps its messages in msg_store under "
                                     "lock_msg_store, each with is_retrieved: update client/node/supernode_loop.py")


def _is_stored(state: Any, message_id: str) -> bool:
    with state.lock_msg_store:
        return message_id in state.msg_store


def _waiting_reply_run(state: Any) -> int | None:
    """The run of a reply in the node's state that no one has taken to send yet, or None; reads the state's
    store as ``get_messages_legacy`` does, without marking what it finds as taken."""
    with state.lock_msg_store:
        for entry in state.msg_store.values():
            if not entry.is_retrieved and entry.message.metadata.reply_to_message_id:
                return int(entry.message.metadata.run_id)
    return None


def _forget(state: Any, object_store: Any, message: Any) -> None:
    """What Flower does for a message whose objects failed to arrive: drop it, its objects and its task (with
    the run stopped, every unfinished task of the run is moot)."""
    from flwr.common.constant import Status, SubStatus

    state.delete_messages(message_ids=[message.metadata.message_id])
    object_store.delete(message.metadata.message_id)
    unfinished = (Status.PENDING, Status.STARTING, Status.RUNNING)
    for task in state.get_tasks(run_ids=[message.metadata.run_id], statuses=unfinished):
        state.finish_task(task.task_id, sub_status=SubStatus.FAILED, details=GIVEN_UP)


def forget_given_up_messages() -> None:
    """After a pull that gave its message up while it stood stored (module docstring), forget that message."""
    require_flower("the SuperNode loop's repairs")
    from flwr.supernode import start_client_internal

    _check_state()
    pull = start_client_internal._pull_and_store_message

    def pull_or_forget(**kwargs: Any) -> int | None:
        receive, received = recording(kwargs["receive"])
        run_id = pull(**{**kwargs, "receive": receive})
        if run_id is None and received and _is_stored(kwargs["state"], received[-1].metadata.message_id):
            _forget(kwargs["state"], kwargs["object_store"], received[-1])
        return run_id

    start_client_internal._pull_and_store_message = pull_or_forget


def deliver_stranded_replies() -> None:
    """After a pull that found no message, send the replies waiting in the node's state (module docstring):
    the pull then answers with their run, and Flower's loop goes on to send every waiting reply."""
    require_flower("the SuperNode loop's repairs")
    from flwr.supernode import start_client_internal

    _check_state()
    pull = start_client_internal._pull_and_store_message

    def pull_or_deliver(**kwargs: Any) -> int | None:
        run_id = pull(**kwargs)
        return _waiting_reply_run(kwargs["state"]) if run_id is None else run_id

    start_client_internal._pull_and_store_message = pull_or_deliver


def repair() -> None:
    """Both repairs, in the order they must wrap the pull: a given-up message is forgotten before the pull's
    answer is read for waiting replies."""
    forget_given_up_messages()
    deliver_stranded_replies()
