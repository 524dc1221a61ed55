"""Flower's SuperNode loop, kept in step with its replies when the server stops mid-message or a task ends
without a reply.

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

A third fault needs no server stop. After a message, the loop waits for a reply (``_push_messages``), and
only a reply ends that wait. A ClientApp task that ends before it takes its message leaves none: Flower
answers a message only for a task whose claim expired, and only once the task took it. Seen in the soak:
the warm worker's ``PullTaskInput`` timed out after activating its task, the retry got "412 Failed to start
task", the worker failed the task, and the node, its heartbeats going on, never pulled again; the server
waited out its round timeout for it every round. Here: once no task is left to answer a message, it gets
Flower's ``CLIENT_APP_CRASHED`` error as its reply (`answer_abandoned_messages`).

`repair` applies all three in this process; like `client.node.supernode_timings`, it refuses any Flower but
`common.runtime.flower_pin`'s and names an internal that moved.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged, require_flower

__all__ = ["ABANDONED", "answer_abandoned_messages", "deliver_stranded_replies", "forget_given_up_messages",
           "recording", "repair"]

GIVEN_UP = "the run stopped while this node received its message"
ABANDONED = "its ClientApp task ended without a reply"


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


def _abandoned(state: Any) -> list[Any]:
    """The messages in the node's state that nothing will answer: no task is left to run them and no reply to
    them is there (read after the tasks, as an app stores its reply before it finishes its task)."""
    from flwr.common.constant import Status

    if state.get_tasks(statuses=[Status.PENDING, Status.STARTING, Status.RUNNING]):
        return []
    with state.lock_msg_store:
        messages = [entry.message for entry in state.msg_store.values()]
    replied = {message.metadata.reply_to_message_id for message in messages}
    return [message for message in messages
            if not message.metadata.reply_to_message_id and message.metadata.message_id not in replied]


def _answer(state: Any, object_store: Any, message: Any) -> None:
    """Reply to ``message`` with Flower's error for a ClientApp that stopped, naming how its run's last task
    ended, and drop the message's objects (no task is left to read them)."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, Status
    from flwr.common.logger import log
    from flwr.supernode import start_client_internal

    metadata = message.metadata
    ended = state.get_tasks(run_ids=[metadata.run_id], statuses=[Status.FINISHED])
    last = max(ended, key=lambda task: task.finished_at, default=None)
    reason = f"{ABANDONED}: {last.status.details}" if last is not None and last.status.details else ABANDONED
    log(logging.ERROR, "%s message %s of run %s: %s; replying with an error", metadata.message_type,
        metadata.message_id, metadata.run_id, reason)
    object_store.delete(metadata.message_id)
    start_client_internal._insert_message(Message(Error(ErrorCode.CLIENT_APP_CRASHED, reason), reply_to=message),
                                          state, object_store)


def answer_abandoned_messages() -> None:
    """While the loop waits for a reply, answer each message no task is left to answer (module docstring)."""
    require_flower("the SuperNode loop's repairs")
    from flwr.supernode import start_client_internal

    _check_state()
    push = start_client_internal._push_messages
    if {"state", "object_store"} - set(inspect.signature(push).parameters):
        raise FlowerInternalsChanged("flwr's _push_messages no longer takes the node's state and object store: "
                                     "update client/node/supernode_loop.py")

    def answer_then_push(**kwargs: Any) -> None:
        state = kwargs["state"]
        while _waiting_reply_run(state) is None:
            if abandoned := _abandoned(state):
                for message in abandoned:
                    _answer(state, kwargs["object_store"], message)
                break
            start_client_internal.time.sleep(0.5)  # Flower's look for a reply (`supernode_timings` shortens it)
        push(**kwargs)

    start_client_internal._push_messages = answer_then_push


def repair() -> None:
    """The three repairs; the pull's two in the order they must wrap it: a given-up message is forgotten before
    the pull's answer is read for waiting replies."""
    forget_given_up_messages()
    deliver_stranded_replies()
    answer_abandoned_messages()
