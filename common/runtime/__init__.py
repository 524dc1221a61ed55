"""Running as processes: child processes stopped with their whole tree, what every command
prints, and the Flower release the process wrappers know.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.runtime.console import (
        Report,
        elapsed_log,
        exit_on_errors,
    )
    from fedmeta.common.runtime.flower_pin import (
        FLOWER_VERSION,
        FlowerInternalsChanged,
        require_flower,
    )
    from fedmeta.common.runtime.processes import (
        ChildProcess,
        ProcessError,
        descendants,
        flower_env,
        free_port,
        port_in_use,
        sigterm_as_interrupt,
        wait_until_listening,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
