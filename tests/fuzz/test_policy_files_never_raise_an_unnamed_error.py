"""A factory's policy file, whatever it holds (any JSON, any encoding, damaged bytes), is read into a
`FactoryPolicy` or refused with a plain ``ValueError`` that names the file and the problem: never a
``TypeError`` of a value of the wrong kind, nor an encoding error that names no file."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.client.rounds.policy import FactoryPolicy, load_policy
from tests.fuzz.strategies import FUZZ, changed_document, json_bytes, names_the_problem, scratch_folder

VALID = {"algorithms": ["fomaml", "reptile"], "compression": ["int8", "topk"], "require_dp": True,
         "max_epsilon": 4.0, "require_secure_aggregation": False, "trees": True, "max_rounds": 10,
         "app_version": "0.1.0"}
KEYS = st.sampled_from([f.name for f in fields(FactoryPolicy)]) | st.text(max_size=12)

_FOLDER = scratch_folder("fuzz-policy-")
PATH = Path(_FOLDER.name) / "policy.json"


@FUZZ
@given(json_bytes(changed_document(VALID, KEYS)))
def test_a_policy_file_is_read_or_refused_by_name(content: bytes) -> None:
    PATH.write_bytes(content)
    try:
        policy = load_policy(str(PATH))
    except ValueError as error:
        event("refused")
        assert type(error) is ValueError, f"{type(error).__name__}: {error}"
        names_the_problem(error, f"policy file {str(PATH)!r}")
    else:
        event("accepted")
        assert isinstance(policy, FactoryPolicy)
