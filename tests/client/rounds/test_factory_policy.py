"""A factory's own policy: the client refuses a round that breaks it, naming the rule, stops joining when
its privacy budget or its round limit is spent, and nothing of the policy is sent."""

from __future__ import annotations

import json
import re

import pytest
from flwr.app import ConfigRecord, Context, MessageType, RecordDict

from fedmeta.client import load_factory, make_client_app
from fedmeta.client.rounds.joined_rounds import JoinedRounds
from fedmeta.client.rounds.policy import FactoryPolicy, PolicyRefusal, load_policy
from fedmeta.common import RoundSettings
from fedmeta.common.security.privacy import spent_epsilon
from fedmeta.server import initial_meta_parameters
from fedmeta.server.strategy.fedmeta import model_records
from tests.support.flower_messages import delivered

RUN_CONFIG = {"family": "quality", "num-factories": 3, "num-held-out": 1, "device": "cpu"}
# Rounds at noise multiplier 3 within epsilon 4 (delta 1e-5), counted apart from the policy.
ALLOWED = max(n for n in range(1, 200) if spent_epsilon(n, 1.0, 3.0, 1e-5) <= 4.0)


@pytest.fixture(scope="module")
def global_params():
    factory = load_factory({"partition-id": 0}, RUN_CONFIG)
    return initial_meta_parameters(factory.source, "fomaml", 0.05, seed=0)


def _policy_file(tmp_path, **rules) -> str:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(rules))
    return str(path)


def _train(context: Context, params, settings: RoundSettings):
    records = {**model_records(params), "config": ConfigRecord(settings.to_config())}
    return make_client_app(RUN_CONFIG)(delivered(RecordDict(records), MessageType.TRAIN, 11), context)


def _context(policy: str) -> Context:
    return Context(run_id=1, node_id=11, node_config={"partition-id": 1, "policy": policy}, state=RecordDict(),
                   run_config={})


def test_a_round_the_policy_allows_trains_and_sends_nothing_of_the_policy(tmp_path, global_params):
    context = _context(_policy_file(tmp_path, algorithms=["fomaml"], compression=["none", "int8"]))
    reply = _train(context, global_params, RoundSettings(algorithm="fomaml", local_steps=1, compression="int8"))
    assert not reply.has_error() and set(reply.content.keys()) == {"delta", "metrics"}
    assert "policy" not in json.dumps({k: str(dict(v)) for k, v in reply.content.items()})


@pytest.mark.parametrize(("rules", "settings", "rule"), [
    ({"algorithms": ["fomaml"]}, {"algorithm": "maml"}, "algorithm 'maml' is not among ['fomaml']"),
    ({"compression": ["int8"]}, {"compression": "none"}, "compression 'none' is not among ['int8']"),
    ({"require_dp": True}, {}, "differential privacy is required and this round has none"),
    ({"max_epsilon": 8.0}, {}, "differential privacy is required"),
    ({"require_secure_aggregation": True}, {"dp_noise_multiplier": 1.0}, "secure aggregation is required"),
    ({"trees": False}, {"algorithm": "xgb-bagging"}, "no tree rounds (trees: false)"),
])
def test_a_round_that_breaks_a_rule_is_refused_naming_it(tmp_path, global_params, rules, settings, rule):
    context = _context(_policy_file(tmp_path, **rules))
    with pytest.raises(PolicyRefusal, match="policy: " + re.escape(rule)):
        _train(context, global_params, RoundSettings(**{"algorithm": "fomaml", **settings}))


def test_a_factory_stops_joining_when_its_own_epsilon_would_pass_its_budget():
    policy, rounds = FactoryPolicy(max_epsilon=4.0), JoinedRounds(RecordDict())
    settings = RoundSettings(algorithm="fomaml", dp_noise_multiplier=3.0, dp_delta=1e-5)
    for _ in range(ALLOWED):
        policy.admit(settings, rounds)
    with pytest.raises(PolicyRefusal, match=rf"privacy budget is spent.*{ALLOWED} rounds joined.*max_epsilon 4"):
        policy.admit(settings, rounds)
    assert 5 <= ALLOWED < 10  # epsilon 3.38 after 5 rounds, 5.03 after 10


def test_a_restarted_factory_goes_on_from_the_budget_its_ledger_holds(tmp_path):
    policy, ledger = FactoryPolicy(max_epsilon=4.0), tmp_path / "state" / "policy-ledger.json"
    settings = RoundSettings(algorithm="fomaml", dp_noise_multiplier=3.0, dp_delta=1e-5)
    for _ in range(ALLOWED - 1):
        policy.admit(settings, JoinedRounds(RecordDict(), ledger))
    restarted = JoinedRounds(RecordDict(), ledger)  # a new process: its node state is empty
    assert restarted.count() == ALLOWED - 1
    policy.admit(settings, restarted)
    with pytest.raises(PolicyRefusal, match=rf"privacy budget is spent.*{ALLOWED} rounds joined"):
        policy.admit(settings, JoinedRounds(RecordDict(), ledger))
    assert json.loads(ledger.read_text()) == {"rounds": ALLOWED}
    assert [path.name for path in ledger.parent.iterdir()] == [ledger.name]  # no temporary file left behind


@pytest.mark.parametrize("content", [b'{"rounds": 3', b'{"rounds": -1}', b'{"runs": 3}', b"\xff\xfe"])
def test_a_damaged_ledger_is_refused_by_name_and_left_as_it_was(tmp_path, content):
    ledger = tmp_path / "policy-ledger.json"
    ledger.write_bytes(content)
    before = ledger.read_bytes()
    with pytest.raises(ValueError, match=r"policy ledger .* is damaged"):
        FactoryPolicy(max_rounds=5).admit(RoundSettings(), JoinedRounds(RecordDict(), ledger))
    assert ledger.read_bytes() == before


def test_a_factory_trains_in_at_most_max_rounds():
    policy, rounds = FactoryPolicy(max_rounds=2), JoinedRounds(RecordDict())
    policy.admit(RoundSettings(), rounds)
    policy.admit(RoundSettings(), rounds)
    with pytest.raises(PolicyRefusal, match="has trained in 2 rounds, its max_rounds"):
        policy.admit(RoundSettings(), rounds)


@pytest.mark.parametrize(("content", "problem"), [
    ('{"max_epsilon": 4, "algoritms": ["maml"]}', "unknown key 'algoritms' \\(did you mean 'algorithms'\\?\\)"),
    ('{"max_epsilon": -1}', "'max_epsilon' must be a number > 0"),
    ('{"compression": "int8"}', "'compression' must be a list of names"),
    ('{"algorithms": true}', "'algorithms' must be a list of names, got True"),  # found by tests/fuzz
    ('{"algorithms": ["maml", "sgd"]}', r"'algorithms' names \['sgd'\]"),
    ('{"max_rounds": 0}', "'max_rounds' must be a whole number >= 1"),
    ('{"app_version": 1}', "'app_version' must be a version such as"),
    ('[1, 2]', "must hold a JSON object"),
    ('{"require_dp": tru', "is not valid JSON"),
])
def test_a_bad_policy_file_is_refused_by_name(tmp_path, content, problem):
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        load_policy(str(path))
    with pytest.raises(ValueError, match="not found"):
        load_policy(str(tmp_path / "absent.json"))


def test_a_policy_file_that_is_not_utf8_is_refused_by_name_and_one_with_a_byte_order_mark_is_read(tmp_path):
    """Found by tests/fuzz: a byte of no UTF-8 text was a bare UnicodeDecodeError that named no file."""
    path = tmp_path / "policy.json"
    path.write_bytes(b"\x80")
    with pytest.raises(ValueError, match=re.escape(f"policy file {str(path)!r} is not UTF-8 text (byte 0x80 at "
                                                   "offset 0)")):
        load_policy(str(path))
    path.write_bytes('{"max_rounds": 3}'.encode("utf-8-sig"))
    assert load_policy(str(path)).max_rounds == 3


def test_a_factory_requiring_secure_aggregation_joins_a_secure_round():
    rounds = JoinedRounds(RecordDict())
    FactoryPolicy(require_secure_aggregation=True).admit(RoundSettings(secure_aggregation=True), rounds)
    assert rounds.count() == 1
