"""A factory's own rules for joining a federation, enforced on its side before any local training.

The policy is a JSON file named in the node config (``policy=/etc/fedmeta/policy.json``); it never
leaves the factory. Every key is optional, and a key left out allows anything:

``algorithms``
    the algorithms the factory trains with (e.g. ``["fomaml", "reptile"]``);
``compression``
    the delta encodings it accepts sending (`common.federation.compression`, e.g. ``["int8", "topk"]``);
``require_dp``
    ``true``: only rounds with client-level differential privacy (a noise multiplier above 0);
``max_epsilon``
    the privacy budget: a round is refused once taking part would push the factory's own epsilon
    above it. The factory counts its own epsilon, not the server's: the rounds it joined, each as a
    Gaussian mechanism of the round's noise multiplier with every factory sampled (no amplification by
    sampling, which it cannot check), at the round's delta; an upper bound on what the server reports;
``require_secure_aggregation``
    ``true``: only rounds whose deltas the server sees summed, never alone (``secure-aggregation``);
``trees``
    ``false``: no round of federated trees (``xgb-bagging``, ``xgb-cyclic``): a tree's split thresholds are
    values of the factory's own features, which a network's delta does not show as plainly (docs/security.md);
``max_rounds``
    the most rounds it trains in, over the whole run;
``app_version``
    the one release of the federation's app (``fedmeta-factory``) the factory runs, e.g. ``"0.1.0"``.
    Whatever it says, a factory runs only a bundle whose code is the app it installed
    (`fedmeta.client.node.supernode`); with it, a server that upgraded is refused until the factory has too.

A refused round is an error reply naming the rule (the server counts the factory as failed for that
round and goes on); the rounds joined are counted over every run (`client.rounds.joined_rounds`), in the
factory's state folder when it runs as ``fedmeta client``, so a restart does not reset them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from fedmeta.common.run_settings import COMPRESSIONS, FEDERATED_ALGORITHMS, is_tree_algorithm
from fedmeta.common.validation import suggest

if TYPE_CHECKING:  # the factory's SuperNode reads policies (`app_version`) and never imports torch or a ClientApp
    from fedmeta.client.rounds.joined_rounds import JoinedRounds
    from fedmeta.common import RoundSettings

__all__ = ["POLICY_KEY", "FactoryPolicy", "PolicyRefusal", "load_policy"]

POLICY_KEY = "policy"  # the node config key naming the policy file


class PolicyRefusal(ValueError):
    """A round the factory's policy does not allow; the message names the rule."""


@dataclass(frozen=True)
class FactoryPolicy:
    """What a factory allows (see the module docstring); None: anything."""

    algorithms: tuple[str, ...] | None = None
    compression: tuple[str, ...] | None = None
    require_dp: bool = False
    max_epsilon: float | None = None
    require_secure_aggregation: bool = False
    trees: bool = True
    max_rounds: int | None = None
    app_version: str | None = None

    def __post_init__(self) -> None:
        for key, allowed in (("algorithms", FEDERATED_ALGORITHMS), ("compression", COMPRESSIONS)):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"policy {key!r} must be a list of names, got {value!r}")
            unknown = [v for v in value if v not in allowed]
            if unknown:
                raise ValueError(f"policy {key!r} names {unknown}; known: {', '.join(allowed)}")
            object.__setattr__(self, key, tuple(value))
        for key in ("require_dp", "require_secure_aggregation", "trees"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"policy {key!r} must be true or false, got {getattr(self, key)!r}")
        if self.max_epsilon is not None and (isinstance(self.max_epsilon, bool) or not isinstance(
                self.max_epsilon, int | float) or not self.max_epsilon > 0):
            raise ValueError(f"policy 'max_epsilon' must be a number > 0, got {self.max_epsilon!r}")
        if self.max_rounds is not None and (isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int)
                                            or self.max_rounds < 1):
            raise ValueError(f"policy 'max_rounds' must be a whole number >= 1, got {self.max_rounds!r}")
        if self.app_version is not None and not (isinstance(self.app_version, str) and self.app_version.strip()):
            raise ValueError(f"policy 'app_version' must be a version such as \"0.1.0\", got {self.app_version!r}")

    def admit(self, settings: RoundSettings, rounds: JoinedRounds) -> None:
        """Raise `PolicyRefusal` naming the first rule this round breaks; otherwise count it as joined."""
        joined = rounds.count()
        if self.algorithms is not None and settings.algorithm not in self.algorithms:
            raise PolicyRefusal(f"policy: algorithm {settings.algorithm!r} is not among {list(self.algorithms)}")
        if not self.trees and is_tree_algorithm(settings.algorithm):
            raise PolicyRefusal(f"policy: no tree rounds (trees: false), and this round boosts trees "
                                f"({settings.algorithm})")
        if self.compression is not None and settings.compression not in self.compression:
            raise PolicyRefusal(f"policy: compression {settings.compression!r} is not among {list(self.compression)}")
        if self.require_secure_aggregation and not settings.secure_aggregation:
            raise PolicyRefusal("policy: secure aggregation is required and this round does not offer it")
        private = settings.dp_noise_multiplier > 0
        if (self.require_dp or self.max_epsilon is not None) and not private:
            raise PolicyRefusal("policy: differential privacy is required and this round has none "
                                "(dp-noise-multiplier 0)")
        if self.max_epsilon is not None:
            from fedmeta.common.security.privacy import spent_epsilon  # torch: imported by a round, not a SuperNode

            epsilon = spent_epsilon(joined + 1, 1.0, settings.dp_noise_multiplier, settings.dp_delta)
            if epsilon > self.max_epsilon:
                raise PolicyRefusal(f"policy: the privacy budget is spent: joining round {settings.server_round} "
                                    f"would bring this factory's epsilon to {epsilon:.3g} (at delta "
                                    f"{settings.dp_delta:g}, {joined} rounds joined), above max_epsilon "
                                    f"{self.max_epsilon:g}")
        if self.max_rounds is not None and joined >= self.max_rounds:
            raise PolicyRefusal(f"policy: this factory has trained in {joined} rounds, its max_rounds")
        rounds.record(joined + 1)


    def admit_exchange(self, settings: RoundSettings, rounds: JoinedRounds, round_key: str, *,
                       opens_round: bool) -> None:
        """A round of several exchanges (xgb-histogram): its first is admitted and counted as a round (`admit`),
        each later one answered only where that round was joined, so a refused round gets nothing."""
        if opens_round:
            self.admit(settings, rounds)
            rounds.open_round(round_key)
        elif not rounds.is_open(round_key):
            raise PolicyRefusal(f"policy: round {settings.server_round} was not joined (refused, or this factory "
                                "restarted during it), so none of its exchanges is answered")


def load_policy(path: str) -> FactoryPolicy:
    """The policy file at ``path``, read each round (a factory may tighten it during a run); a ``ValueError``
    names a missing or unreadable file, bad JSON or an unknown key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # -sig: as Windows editors save it, or not
    except FileNotFoundError:
        raise ValueError(f"policy file {path!r} not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"policy file {path!r} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                         f"offset {error.start})") from None
    except OSError as error:  # a folder, no permission
        raise ValueError(f"policy file {path!r} cannot be read: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"policy file {path!r} is not valid JSON: {error.msg} (line {error.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"policy file {path!r} must hold a JSON object")
    known = [f.name for f in fields(FactoryPolicy)]
    for key in data:
        if key not in known:
            hint = suggest(key, known)
            raise ValueError(f"policy file {path!r}: unknown key {key!r}"
                             + (f" (did you mean {hint!r}?)" if hint else "") + f"; known: {', '.join(known)}")
    try:
        return FactoryPolicy(**data)
    except ValueError as error:
        raise ValueError(f"policy file {path!r}: {error}") from None
