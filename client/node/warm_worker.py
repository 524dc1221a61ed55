"""A warm ClientApp worker: one long-lived process that runs every ClientApp task of a factory's node.

Flower's SuperExec starts a fresh ``flwr-clientapp`` process for every message, and that process
(``flwr/supernode/runtime/run_clientapp.py``) handles one task and exits: each message pays for
importing torch and the app again (1.9 s measured here). This worker takes the SuperExec's place
with ``--isolation process``. It claims each ClientApp task from the SuperNode's local runtime API as
the SuperExec does (``AcquireTask``) and runs it as ``run_clientapp`` does, with Flower's own task
functions (``pull_task_input``, ``push_message``, ``push_task_output``), the same task heartbeat and the
same error handling (an exception becomes an error reply and a failed task), but in this process:
torch and the app are imported once.

Nothing is kept from one task to the next but imported modules and the loaded ClientApp (which
holds no data: what a run keeps lives in its Context, which the SuperNode holds per run). App code
is imported once per worker, so an upgraded app needs ``fedmeta client`` restarted; app dependencies
are never installed at run time (they are the image's).

While a task runs, its claim is written to a record file. A worker that dies mid-task (a crash, the
kernel's OOM killer) leaves the record behind; `answer_dropped_task` then replies to the message it
held with Flower's ``CLIENT_APP_CRASHED`` error and finishes the task as failed, so the server learns
at once rather than when the task's claim expires (after 60 s without its heartbeat, Flower answers
it the same way). ``fedmeta client`` does that and starts
a new worker (`client.node.deployment`). Like `client.node.supernode_timings`, this module uses Flower
internals and refuses any Flower but the one it was written for.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedmeta.client.node.supernode_timings import shorten_object_pulls
from fedmeta.common.runtime.flower_pin import require_flower

__all__ = ["TASK_POLL_S", "TaskRecord", "WarmWorker", "answer_dropped_task", "main"]

log = logging.getLogger(__name__)
TASK_POLL_S = 0.05  # between looks for a task: a local HTTP request, cheap beside a round


def _runtime_client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    """A client of the SuperNode's local runtime API, as the SuperExec (no token) or as a task (its token)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None, interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


@dataclass(frozen=True)
class TaskRecord:
    """A claimed task's token and, once pulled, the message it carries (without its content), its type and
    ids; ``replying`` once the reply's upload has begun."""

    token: str
    message: bytes | None = None  # a content-free Message proto: enough to reply to it
    message_type: str = ""
    run_id: int = 0
    node_id: int = 0
    replying: bool = False

    def write(self, path: Path) -> None:
        """Atomically: a crash mid-write leaves the previous record or none, never half of one."""
        fields = {**asdict(self), "message": None if self.message is None else base64.b64encode(self.message).decode()}
        part = path.with_name(path.name + ".part")
        part.write_text(json.dumps(fields), encoding="utf-8")
        os.replace(part, path)

    @classmethod
    def read(cls, path: Path) -> TaskRecord | None:
        """The record a worker left, or None; a record that cannot be read is named in the error."""
        if not path.exists():
            return None
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            message = None if fields["message"] is None else base64.b64decode(fields["message"])
            return cls(str(fields["token"]), message, str(fields["message_type"]), int(fields["run_id"]),
                       int(fields["node_id"]), bool(fields["replying"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"the warm worker's task record {path} is unreadable: {error}") from error


def answer_dropped_task(record_path: Path, runtime_api_address: str, reason: str) -> TaskRecord | None:
    """Reply to the message a dead worker held with ``CLIENT_APP_CRASHED`` and finish its task as failed;
    the record of the task it answered, or None. The record is removed either way.

    Left to Flower: a task claimed but not yet pulled (its claim expires and it is handed out again),
    and one whose reply was being uploaded (that reply, complete or not, is the task's answer: a second
    one would race it).
    """
    record = TaskRecord.read(record_path)
    if record is None:
        return None
    record_path.unlink()
    if record.message is None or record.replying:
        return None
    held = message_from_proto(ProtoMessage.FromString(record.message))
    client = _runtime_client(runtime_api_address, "flwr-clientapp", record.token)
    try:
        context = Context(run_id=record.run_id, node_id=record.node_id, node_config={}, state=RecordDict(),
                          run_config={})
        push_message(client, Message(Error(ErrorCode.CLIENT_APP_CRASHED, reason), reply_to=held), context)
        push_task_output(client=client, context=None, sub_status=SubStatus.FAILED, details=reason)
    finally:
        client.close()
    return record


class WarmWorker:
    """Claims this node's ClientApp tasks one at a time and runs them in this process."""

    def __init__(self, runtime_api_address: str, record_path: Path) -> None:
        require_flower("the warm ClientApp worker")
        shorten_object_pulls()  # its SuperNode hands each message over while still downloading it
        self.address = runtime_api_address
        self.record_path = record_path
        self._installed: set[str] = set()  # FAB hashes already unpacked into Flower's home
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)

    def claim(self, client: RuntimeHttpClient) -> str | None:
        """A pending ClientApp task's token, or None when there is none."""
        response = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return response.token if response.HasField("task") and response.token else None

    def serve(self, poll_s: float = TASK_POLL_S) -> None:
        """Run tasks until stopped (SIGTERM / SIGINT end the process as they end Flower's SuperExec)."""
        client = _runtime_client(self.address, "SuperExec")
        try:
            while True:
                token = self.claim(client)
                if token is None:
                    time.sleep(poll_s)
                else:
                    self.run_task(token)
        finally:
            client.close()

    def _client_app(self, fab_content: bytes, fab_hash: str, fab_id: str, fab_version: str) -> ClientApp:
        if fab_hash not in self._installed:
            install_from_fab(fab_content, skip_prompt=True)
            self._installed.add(fab_hash)
        return self._load(fab_id, fab_version, fab_hash)

    def run_task(self, token: str) -> str:
        """One task, as ``run_clientapp`` runs it; its final status (``SubStatus``)."""
        TaskRecord(token).write(self.record_path)
        client = _runtime_client(self.address, "flwr-clientapp", token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message: Message | None = None
        record: TaskRecord | None = None
        reply: Message | None = None
        context: Context | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            proto = message_to_proto(remove_content_from_message(message)).SerializeToString()
            record = TaskRecord(token, proto, message.metadata.message_type, context.run_id, context.node_id)
            record.write(self.record_path)
            app = self._client_app(fab.content, fab.hash_str, run.fab_id, run.fab_version)
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as error:  # reported to the server as the task's error, as Flower does
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(error)}:<'{error}'>"
            if isinstance(error, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                details = "An exception was raised when attempting to load `ClientApp`"
            log.exception("ClientApp raised an exception")
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        try:
            if reply is not None and context is not None:
                if record is not None:
                    replace(record, replying=True).write(self.record_path)
                push_message(client, reply, context)
        except Exception:  # Flower's run_clientapp logs it too; the task still finishes below
            log.exception("failed to push the reply message")
            status = SubStatus.FAILED
        finally:
            # The heartbeat stops first: one sent after the task's output is in gets "no such task", on which
            # Flower's sender raises SIGINT in this process (ending a one-task flwr-clientapp, but this worker).
            if heartbeat.is_running:
                heartbeat.stop()
            push_task_output(client=client, context=context, sub_status=status, details=details)
            client.close()
            self.record_path.unlink(missing_ok=True)
        return status


def main() -> None:
    """``python -m fedmeta.client.node.warm_worker --runtime-api-address HOST:PORT --record FILE``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's local runtime API")
    parser.add_argument("--record", type=Path, required=True, help="where a running task's claim is kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request: 20 a second while idle
    WarmWorker(args.runtime_api_address, args.record).serve()


if __name__ == "__main__":
    main()
