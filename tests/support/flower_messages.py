"""Build Flower messages in-process, as the SuperLink would deliver them.

Lets tests call a real `ClientApp` and feed real replies to the strategy without
starting a simulation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from flwr.app import ArrayRecord, Error, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import Tensor

from fedmeta.common.federation.compression import Compression, encode_delta


def act_as_server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outgoing messages take their sender from the running task, as on a real server: run 1, node 0."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1 if name == "_run_id" else 0)


def delivered(content: RecordDict, message_type: str, dst_node_id: int, message_id: str = "m",
              run_id: int = 1) -> Message:
    """A message of run ``run_id`` from the server (node 0) as it arrives at ``dst_node_id``."""
    metadata = Metadata(
        run_id=run_id,
        message_id=message_id,
        src_node_id=0,
        dst_node_id=dst_node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content, metadata=metadata)


def reply_from(node_id: int, content: RecordDict | Error, message_type: str = "train") -> Message:
    """A reply from ``node_id`` carrying ``content`` or an error."""
    return Message(content, reply_to=delivered(RecordDict(), message_type, node_id))


def delta_record(delta: Mapping[str, Tensor]) -> ArrayRecord:
    """A factory's uncompressed ``delta`` as its reply carries it (packed,
    `common.federation.compression.encode_delta`)."""
    return ArrayRecord(torch_state_dict=encode_delta(delta, Compression())[0])
