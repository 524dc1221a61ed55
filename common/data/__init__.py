"""Factory data: the table connector, the shared data sets, the synthetic factory families and
each factory's own scaling.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.data.scaling import (
        FeatureScaling,
    )
    from fedmeta.common.data.synthetic import (
        FAMILY_KINDS,
        FAULT_CLASSES,
        MIN_CLASS_SAMPLES,
        FactoryFamily,
        FamilyConfig,
        make_family,
        min_class_samples,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
