"""Factory data: the table connector, the shared data sets, the synthetic factory families and
each factory's own scaling.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "scaling": ["FeatureScaling"],
        "synthetic": [
            "FAMILY_KINDS", "FAULT_CLASSES", "MIN_CLASS_SAMPLES", "FactoryFamily", "FamilyConfig", "make_family",
            "min_class_samples",
        ],
    },
)
