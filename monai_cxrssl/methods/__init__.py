"""SSL methods, one module each: views -> embeddings -> loss, plus the state each keeps.

A new method is one new module in this folder defining an :class:`SSLMethod` subclass: :func:`available`
finds it, and ``monai_cxrssl.methods.<ClassName>`` (what a bundle's ``network_def`` names) resolves it, with no
edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import SSLMethod
from .simclr import SimCLR
from .micle import MICLe
from .moco import MoCo
from .dino import DINO

__all__ = ["SSLMethod", "SimCLR", "MICLe", "MoCo", "DINO", "available"]


def available() -> dict[str, type[SSLMethod]]:
    """Every SSL method of this package by its :attr:`~SSLMethod.name`: the subclasses of :class:`SSLMethod`
    defined in its modules, sorted by name."""
    found: dict[str, type[SSLMethod]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, SSLMethod) and obj is not SSLMethod \
                    and obj.__module__ == module.__name__:
                if obj.name in found:
                    raise RuntimeError(f"two SSL methods are named '{obj.name}': {found[obj.name].__qualname__} "
                                       f"and {obj.__qualname__}")
                found[obj.name] = obj
    return dict(sorted(found.items()))


def __getattr__(name: str):
    """``monai_cxrssl.methods.<ClassName>`` for a method module not imported above."""
    for cls in available().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
