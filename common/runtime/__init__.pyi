"""The exports of `fedmeta.common.runtime` (loaded on first use; see `__init__.py`)."""

from .console import Report, elapsed_log, exit_on_errors
from .flower_pin import FLOWER_VERSION, FlowerInternalsChanged, require_flower
from .processes import (
    ChildProcess,
    ProcessError,
    descendants,
    flower_env,
    free_port,
    port_in_use,
    sigterm_as_interrupt,
    wait_until_listening,
)
