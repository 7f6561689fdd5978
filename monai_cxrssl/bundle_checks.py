"""Checks of a ``python -m monai.bundle run`` command line, made first in every bundle's ``initialize``.

MONAI's bundle runner takes any ``--id value`` pair as an override and adds the ones that name
no setting to the config, where nothing reads them: ``--init_weight x.pt`` (for
``init_weights``) would train a randomly initialised model and exit 0. It also rewrites ``#``
(its old id separator) to ``::`` in every plain string value, so ``--output_dir o#ut`` would
write to ``o::ut``. :func:`check_run` refuses both before anything is built or trained, with an
:class:`~monai_cxrssl.exceptions.OverrideError` naming the override, and for an unknown one the
nearest setting the bundle has ("did you mean 'init_weights'?").

MONAI wraps every exception raised while it instantiates a component or evaluates an
expression in its own ``RuntimeError`` ("Failed to instantiate component ..."), so the last
line of a failed run's traceback would be MONAI's generic message, not the project's error
naming the file or field. :func:`check_run` therefore also installs :func:`show_error_last`
as ``sys.excepthook``: the whole traceback is printed as usual, then the project's own error
once more as the last lines.

Every bundle config of the project starts its ``initialize`` list with
``"$monai_cxrssl.bundle_checks.check_run()"``.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from monai_cxrssl.exceptions import CXRSSLError, OverrideError

__all__ = ["check_run", "check_overrides", "known_ids", "show_error_last", "root_error"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REFERENCE_PREFIXES = ("$", "@", "%")  # expressions, references and macros: '#' is an id separator there


def _split(id_: str) -> list[str]:
    return [p for p in str(id_).replace("#", "::").split("::")]


_MISSING = object()


def _node(config: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` (dictionary keys, list indices) in ``config``, or ``_MISSING``."""
    node = config
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _component(path: str):
    """The callable a ``_target_`` names (a dotted path, or a MONAI short name such as ``Compose``), or None."""
    from pydoc import locate

    if "." in path:
        return locate(path)
    from monai.bundle.config_item import ComponentLocator

    modules = ComponentLocator().get_component_module_name(path)
    for module in [modules] if isinstance(modules, str) else list(modules or []):
        found = locate(f"{module}.{path}")
        if found is not None:
            return found
    return None


def _takes_argument(config: Any, parts: Sequence[str]) -> bool:
    """Whether ``parts`` names a new argument of a component (its parent has a ``_target_`` accepting it)."""
    parent = _node(config, parts[:-1])
    if not (isinstance(parent, Mapping) and isinstance(parent.get("_target_"), str)):
        return False
    target = parent["_target_"]
    if target.startswith(_REFERENCE_PREFIXES):
        return True  # decided at run time
    func = _component(target)
    if func is None:
        return True  # MONAI reports an unknown component itself
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return True
    return parts[-1] in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def known_ids(config: Mapping, prefix: str = "") -> list[str]:
    """Every id of ``config`` reachable through dictionaries (``a``, ``a#b``, ...), for suggestions."""
    ids = []
    for k, v in config.items():
        id_ = f"{prefix}{k}"
        ids.append(id_)
        if isinstance(v, Mapping):
            ids.extend(known_ids(v, id_ + "#"))
    return ids


def _rewritten_strings(value: Any) -> list[str]:
    """Plain strings inside ``value`` in which MONAI's parser would rewrite ``#`` to ``::``."""
    if isinstance(value, str):
        return [value] if "#" in value and not value.startswith(_REFERENCE_PREFIXES) else []
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _rewritten_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _rewritten_strings(v)]
    return []


def check_overrides(config: Mapping, overrides: Mapping[str, Any], source: str = "the bundle") -> None:
    """Refuse overrides that name no setting of ``config`` or hold a ``#`` MONAI would rewrite.

    An override names a setting when its id exists in ``config``, or when it adds an argument to
    a component (a dictionary with ``_target_``) whose callable takes that argument
    (``--network_def#backbone#depth 2``).

    Args:
        config: the bundle's configuration as read from its config files (before any override),
            with its metadata under ``_meta_`` if it has any.
        overrides: id -> value pairs as given on the command line (``--id value``).
        source: the config files, named in the error.

    Raises:
        OverrideError: naming the first bad override, with the nearest known setting.
    """
    for id_, value in overrides.items():
        parts = _split(id_)
        if parts[0] != "_meta_" and _node(config, parts) is _MISSING and not _takes_argument(config, parts):
            depth = len(parts)
            candidates = [c for c in known_ids(config) if len(_split(c)) == depth and not c.startswith("_meta_")]
            close = difflib.get_close_matches(str(id_).replace("::", "#"), candidates, n=1, cutoff=0.6)
            hint = (f"did you mean '--{close[0]}'?" if close else
                    "its settings are: " + ", ".join(sorted(k for k, v in config.items()
                                                            if not isinstance(v, (Mapping, list)))))
            raise OverrideError(f"unknown setting '--{id_}' (value {value!r}): {source} has no setting "
                                f"'{id_}', so it would be ignored; {hint}")
        bad = _rewritten_strings(value)
        if bad:
            raise OverrideError(
                f"'--{id_} {bad[0]}': MONAI's config parser rewrites '#' in a value to '::' (its id separator), "
                f"so this would become {bad[0].replace('#', '::')!r}; use a path or value without '#' "
                f"(e.g. rename the folder or link to it)")


def _running_bundle() -> tuple[Any, dict] | None:
    """``(config_file, overrides)`` of the ``monai.bundle`` run in progress, or None outside one.

    MONAI's ``create_workflow`` (behind ``python -m monai.bundle run`` and ``monai.bundle.run``)
    holds the config files and the remaining arguments (the overrides, merged with any
    ``args_file``) while it initialises the workflow, which is when this runs.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "create_workflow" and frame.f_globals.get("__name__") == "monai.bundle.scripts":
            local = frame.f_locals
            args = dict(local.get("_args") or {})
            workflow_class = local.get("workflow_class")
            named = set()
            if workflow_class is not None:
                named = {n for n, p in inspect.signature(workflow_class.__init__).parameters.items()
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
            named |= {"workflow_name", "config_file", "args_file"}
            return local.get("config_file"), {k: v for k, v in args.items() if k not in named}
        frame = frame.f_back
    return None


def check_run() -> None:
    """Check the overrides of the ``monai.bundle`` run in progress; show the project's errors last.

    A no-op for the checks when the config was not started by MONAI's ``run`` (e.g. a
    ``ConfigWorkflow`` built in Python, whose caller passes its own arguments).

    Raises:
        OverrideError: for an override naming no setting of the bundle's config files, or with a
            ``#`` in a plain value (see :func:`check_overrides`).
    """
    if sys.excepthook is not show_error_last:
        global _previous_hook
        _previous_hook = sys.excepthook
        sys.excepthook = show_error_last
    running = _running_bundle()
    if running is None:
        return
    config_file, overrides = running
    if not overrides or config_file is None:
        return
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_files(config_file)
    files = [str(f) for f in (config_file if isinstance(config_file, (list, tuple)) else [config_file])]
    check_overrides(config, overrides, source=" + ".join(files))


def root_error(exc: BaseException) -> BaseException | None:
    """The project's own error behind ``exc`` (MONAI's wrapping of it), or None when there is none.

    Follows the chain of causes to its first exception; that one counts when it is a
    :class:`~monai_cxrssl.exceptions.CXRSSLError` or was raised in this package's code.
    """
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    for e in reversed(chain):
        if isinstance(e, CXRSSLError):
            return e
    first = chain[-1]
    tb = traceback.extract_tb(first.__traceback__) if first.__traceback__ is not None else []
    if tb and os.path.abspath(tb[-1].filename).startswith(_PACKAGE_DIR + os.sep):
        return first
    return None


_previous_hook = sys.excepthook


def show_error_last(exc_type, exc, tb) -> None:
    """``sys.excepthook``: the usual traceback, then the project's error behind it as the last lines."""
    _previous_hook(exc_type, exc, tb)
    ours = root_error(exc) if isinstance(exc, BaseException) else None
    if ours is None or ours is exc:
        return
    print(f"\nThe run stopped on this error (MONAI's report of it is above):\n"
          f"{type(ours).__name__}: {ours}", file=sys.stderr)
