"""The server's pull of replies waits for an upload only while its sender is connected and the round lasts.

A factory killed between sending its reply's message and its objects once stalled a round for 215 s. Here the
SuperLink's runtime API is a stand-in holding one reply whose objects arrive (or never do), served to a real
`HttpGrid` of Flower's, so the pull's protocol is Flower's own.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import GetNodesResponse, PullAppMessagesResponse  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run
from flwr.superlink.grid.http_grid import HttpGrid

from fedmeta.server.reply_pull import OnlineNodes, pull_replies
from tests.support.flower_messages import reply_from

FACTORY_NODE = 7


class RuntimeAPI:
    """The SuperLink's runtime API holding one reply from `FACTORY_NODE`, whose array object arrives after
    ``arrives_after`` pulls of it (never: None) and whose node is connected while ``online``."""

    def __init__(self, arrives_after: int | None, online: bool) -> None:
        self.reply = reply_from(FACTORY_NODE, RecordDict({"delta": ArrayRecord([np.arange(3.0)]),
                                                          "metrics": MetricRecord({"loss": 0.5})}))
        self.objects = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(self.reply).items()}
        self.late = next(object_id for object_id, obj in get_all_nested_objects(self.reply).items()
                         if obj.__class__.__name__ == "Array")
        self.arrives_after, self.online = arrives_after, online
        self.pulls_of_late = 0
        self.confirmed: list[str] = []

    def PullMessages(self, request):  # the gRPC methods' names
        proto = message_to_proto(remove_content_from_message(self.reply))
        proto.metadata.message_id = self.reply.object_id
        return PullAppMessagesResponse(messages_list=[proto], message_object_trees=[get_object_tree(self.reply)])

    def PullObject(self, request):
        if request.object_id == self.late:
            self.pulls_of_late += 1
            if self.arrives_after is None or self.pulls_of_late <= self.arrives_after:
                return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True,
                                  object_content=self.objects[request.object_id])

    def ConfirmMessageReceived(self, request):
        self.confirmed.append(request.message_object_id)

    def GetNodes(self, request):
        return GetNodesResponse(nodes=[NodeInfo(node_id=FACTORY_NODE)] if self.online else [])


def grid_over(api: RuntimeAPI) -> HttpGrid:
    grid = HttpGrid(token="run-token")
    grid._client = api  # the grid connects lazily: this stands in for its connection
    grid.set_run(Run.create_empty(run_id=1))
    return grid


def test_an_upload_still_coming_from_a_connected_factory_is_waited_for():
    api = RuntimeAPI(arrives_after=3, online=True)
    [reply] = pull_replies(grid_over(api), ["sent"], deadline=time.monotonic() + 30)
    assert not reply.has_error()
    assert reply.content["metrics"]["loss"] == 0.5
    np.testing.assert_array_equal(reply.content["delta"].to_numpy_ndarrays()[0], np.arange(3.0))
    assert api.pulls_of_late == 4 and api.confirmed == [api.reply.object_id]


def test_a_reply_whose_factory_went_offline_mid_upload_is_an_error_within_seconds():
    api = RuntimeAPI(arrives_after=None, online=False)
    started = time.monotonic()
    [reply] = pull_replies(grid_over(api), ["sent"], deadline=time.monotonic() + 600)
    assert time.monotonic() - started < 10  # Flower's grid waited for the object-push session to expire
    assert reply.has_error() and reply.metadata.reply_to_message_id == api.reply.metadata.reply_to_message_id
    assert f"node {FACTORY_NODE} went offline before its upload finished" in reply.error.reason
    assert api.confirmed == []


def test_an_upload_not_finished_by_the_rounds_deadline_is_an_error():
    api = RuntimeAPI(arrives_after=None, online=True)
    started = time.monotonic()
    [reply] = pull_replies(grid_over(api), ["sent"], deadline=time.monotonic() + 1.5)
    assert 1.5 <= time.monotonic() - started < 10
    assert "the round's timeout passed before its upload finished" in reply.error.reason


def test_the_connected_nodes_are_asked_at_most_once_a_second():
    class Grid:
        asked = 0

        def get_node_ids(self):
            self.asked += 1
            return [1]

    now = [0.0]
    grid = Grid()
    online = OnlineNodes(grid, clock=lambda: now[0])
    assert 1 in online and 2 not in online and grid.asked == 1
    now[0] = 1.0
    assert 1 in online and grid.asked == 2


@pytest.mark.parametrize("status", [413, 500])
def test_a_pull_too_large_for_the_superlink_pulls_nothing_and_other_http_errors_propagate(status):
    class Refusing(RuntimeAPI):
        def PullMessages(self, request):  # the gRPC methods' names
            response = httpx.Response(status, request=httpx.Request("POST", "http://superlink"))
            raise httpx.HTTPStatusError("refused", request=response.request, response=response)

    grid = grid_over(Refusing(arrives_after=0, online=True))
    if status == 413:
        assert pull_replies(grid, ["sent"], deadline=None) == []
    else:
        with pytest.raises(httpx.HTTPStatusError):
            pull_replies(grid, ["sent"], deadline=None)
