"""Kernelpit in Jupyter: the ``%kp`` magics and live ipywidgets panels.

``%load_ext kernelpit`` registers the magics (see :mod:`kernelpit.widgets.magics`).
From Python::

    from kernelpit.widgets import HealthPanel, SessionsPanel
    HealthPanel(kernelpit.connect())                       # worker health, live
    pool.options(display=True).call("train", epochs=3)     # streaming-output panel

Heavy imports (ipywidgets, IPython) happen on first use: worker kernels import
:mod:`kernelpit.widgets.wire` for ``%kp push/pull`` and nothing else.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HealthPanel", "SessionsPanel", "StreamPanel", "ToolsView", "BackgroundCall",
           "load_ipython_extension", "unload_ipython_extension"]

_magics: Any = None


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext kernelpit``: register ``%kp`` / ``%%kp``."""
    global _magics
    from .magics import KernelpitMagics
    if _magics is not None and _magics.shell is ip:
        return
    _magics = KernelpitMagics(ip)
    ip.register_magics(_magics)


def unload_ipython_extension(ip: Any) -> None:
    global _magics
    if _magics is not None:
        _magics.unload()
        _magics = None


def __getattr__(name: str) -> Any:
    if name in ("HealthPanel", "SessionsPanel", "ToolsView"):
        from . import panels
        return getattr(panels, name)
    if name in ("StreamPanel", "BackgroundCall"):
        from . import stream
        return getattr(stream, name)
    raise AttributeError(name)
