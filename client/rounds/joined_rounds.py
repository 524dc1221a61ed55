"""How many rounds this factory joined, over every run it served: what its policy's round limit and privacy
budget count (`client.rounds.policy`; privacy loss adds up over every release of its data, whatever the run).
Kept in the node's state and, where the node names a ledger file (``fedmeta client`` puts it in its state
folder), in that file too, written atomically after every round joined and read back first: a restarted
factory goes on from what it spent and never starts its budget afresh."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from fedmeta.common.runtime.files import atomic_write

__all__ = ["LEDGER_FILE", "LEDGER_KEY", "JoinedRounds", "read_ledger"]

LEDGER_KEY = "policy-ledger"  # the node config key naming the ledger file
LEDGER_FILE = "policy-ledger.json"  # its name in `fedmeta client`'s state folder
_STATE = "policy"  # the node state's record of the rounds joined in this process
_OPEN = "policy-open-round"  # ... and of the round whose later exchanges it may answer (xgb-histogram)


def read_ledger(path: Path) -> int:
    """The rounds joined that the ledger at ``path`` holds (none yet: 0); a damaged ledger is a ``ValueError``
    naming it: the factory stops rather than forget what it spent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"policy ledger {str(path)!r} is damaged ({error}); it holds the rounds this factory "
                         "joined and the privacy budget they spent, so the factory will not start without it: "
                         "restore it from a backup") from None
    rounds = data.get("rounds") if isinstance(data, dict) else None
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"policy ledger {str(path)!r} is damaged: expected {{\"rounds\": rounds joined}}, got "
                         f"{data!r:.200}; restore it from a backup")
    return rounds


class JoinedRounds:
    """The rounds joined, in the node's ``state`` and the ledger file ``ledger`` (None: the state only)."""

    def __init__(self, state: RecordDict, ledger: Path | None = None) -> None:
        self.state, self.ledger = state, ledger

    def count(self) -> int:
        """The most either record holds (the state's: this process; the ledger's: every process before it)."""
        in_state = int(self.state[_STATE]["rounds"]) if _STATE in self.state else 0
        return max(in_state, read_ledger(self.ledger) if self.ledger is not None else 0)

    def record(self, joined: int) -> None:
        """Record ``joined`` rounds, in the ledger first (atomically: a crash leaves the old count or the new)."""
        if self.ledger is not None:
            self.ledger.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.ledger, lambda temp: temp.write_text(json.dumps({"rounds": joined}), encoding="utf-8"))
        self.state[_STATE] = ConfigRecord({"rounds": joined})

    def open_round(self, key: str) -> None:
        """Note that the round ``key`` (run and round) was joined: its later exchanges may be answered."""
        self.state[_OPEN] = ConfigRecord({"round": key})

    def is_open(self, key: str) -> bool:
        """Whether the round ``key`` was joined in this process (`open_round`)."""
        return _OPEN in self.state and self.state[_OPEN]["round"] == key
