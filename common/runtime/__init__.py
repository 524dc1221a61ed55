"""Running as processes: child processes stopped with their whole tree, what every command
prints, files written whole or not at all, and the Flower release the process wrappers know.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "console": ["Report", "elapsed_log", "exit_on_errors"],
        "files": ["atomic_write"],
        "flower_pin": ["FLOWER_VERSION", "FlowerInternalsChanged", "require_flower"],
        "processes": [
            "ChildProcess", "ProcessError", "descendants", "flower_env", "free_port", "port_in_use",
            "sigterm_as_interrupt", "still_running", "stop_all", "wait_until_listening",
        ],
    },
)
