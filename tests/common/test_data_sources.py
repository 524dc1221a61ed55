"""The shared real data sets plug into the federation: server model and client factories agree."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, MessageType, RecordDict

from fedmeta.client import make_client_app
from fedmeta.common import RoundSettings, SplitSource, default_lr, source_from_config
from fedmeta.common.data.datasets import DATASETS_ENV, dataset_dir
from fedmeta.server import initial_meta_parameters
from fedmeta.server.strategy.fedmeta import model_records
from tests.support.flower_messages import delivered

try:
    dataset_dir("ai4i2020")
except FileNotFoundError:
    pytest.skip(f"shared data sets not found (set {DATASETS_ENV})", allow_module_level=True)


@pytest.mark.parametrize(
    ("dataset", "model", "outputs", "nodes"),
    [("ai4i", "mlp", 2, 3), ("cmapss", "tcn", 1, 11), ("cmapss-fd004", "tcn", 1, 27), ("cwru", "cnn1d", 9, 4),
     ("cwru-fe", "cnn1d", 9, 4)],
)
def test_each_data_set_names_its_model_and_factories(dataset, model, outputs, nodes):
    source = source_from_config({"dataset": dataset})
    assert isinstance(source, SplitSource)
    assert (source.model_config.name, source.model_config.output_dim, source.num_nodes) == (model, outputs, nodes)
    roles = [source.node_factories({"partition-id": p})[0].role for p in range(nodes)]
    assert roles == ["train"] * (nodes - 1) + ["evaluate"]


def test_a_factory_of_a_real_data_set_trains_and_replies_with_a_delta():
    run_config = {"dataset": "ai4i", "device": "cpu"}
    params = initial_meta_parameters(source_from_config(run_config), "maml", 0.05, seed=0)
    records = {
        **model_records(params),
        "config": ConfigRecord(RoundSettings(local_steps=1, server_round=1).to_config()),
    }
    context = Context(run_id=1, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = make_client_app(run_config)(delivered(RecordDict(records), MessageType.TRAIN, 2), context)
    assert set(reply.content.keys()) == {"delta", "metrics"}
    assert reply.content["metrics"]["num-examples"] == 6000  # product variant L


def test_unknown_data_set_lists_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid choices: synthetic, ai4i, cmapss, cmapss-"):
        source_from_config({"dataset": "mnist"})


def test_default_lr_per_data_set_and_unknown_names_rejected():
    assert default_lr("synthetic") == 0.05 and default_lr("cwru") == 0.01 and default_lr("cmapss") == 0.01
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        default_lr("mnist")


def test_cmapss_fd004_transfers_from_fd002_engines_to_fd004_engines_and_its_test_split():
    split = source_from_config({"dataset": "cmapss-fd004"}).split
    assert {f.name.split("/")[0] for f in split.train} == {"FD002"}
    assert split.held_out[0].name.startswith("FD004/engines") and split.test[0].name == "FD004/test"
    assert split.test[0].num_samples == 248  # one window per FD004 test engine


def test_cwru_fe_reads_the_held_out_load_by_the_fan_end_sensor():
    source = source_from_config({"dataset": "cwru-fe"})
    names = [source.node_factories({"partition-id": p})[0].data.name for p in range(source.num_nodes)]
    assert names == ["load0_DE", "load1_DE", "load2_DE", "load3_FE"]
