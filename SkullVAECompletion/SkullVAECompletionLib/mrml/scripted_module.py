"""Slicer's scripted-module base classes and translation functions, for running the module outside the application.

In the application the module's classes derive from ``slicer.ScriptedLoadableModule`` and translate with
``slicer.i18n``; ``slicer-core`` (tests, batch scripts) has neither. The module then uses these stand-ins, which
keep what the Module, Logic and Test classes rely on:

- ``ScriptedLoadableModule``: ``parent`` and ``moduleName`` (the module overrides ``resourcePath`` itself);
- ``ScriptedLoadableModuleLogic``: ``moduleName`` and ``getParameterNode``, the scene's singleton
  ``vtkMRMLScriptedModuleNode`` created as Slicer creates it (name, ``ModuleName`` attribute, singleton tag,
  hidden), so a parameter node saved here reads the same in the application;
- ``ScriptedLoadableModuleTest``: a ``unittest.TestCase`` whose ``delayDisplay`` logs instead of showing a message;
- ``ScriptedLoadableModuleWidget``: only so that the widget class can be defined; it needs Qt to be created;
- ``tr`` and ``translate``: return the text untranslated.
"""

from __future__ import annotations

import logging
import unittest
from typing import Any


def tr(text: str) -> str:
    """``slicer.i18n.tr`` without a translator: the text as written."""
    return text


def translate(context: str, text: str) -> str:
    """``slicer.i18n.translate`` without a translator: the text as written."""
    return text


class ScriptedLoadableModule:
    """Stand-in for slicer.ScriptedLoadableModule.ScriptedLoadableModule (absent in slicer-core)."""

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleWidget:
    """Stand-in so the widget class can be defined; it needs the application to be used."""

    def __init__(self, parent: Any = None) -> None:
        raise RuntimeError("The SkullVAE Completion widget needs the 3D Slicer application.")


class ScriptedLoadableModuleLogic:
    """Stand-in for the logic base class: module name and the scene's singleton parameter node."""

    def __init__(self, parent: Any = None) -> None:
        self.moduleName = self.__class__.__name__.removesuffix("Logic")

    def getParameterNode(self) -> Any:
        import slicer  # noqa: PLC0415  (lazy, as everywhere in mrml/: slicer.mrmlScene is read at call time)

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetHideFromEditors(True)
            node.SetSingletonTag(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Stand-in for the test base class: ``delayDisplay`` logs instead of showing a message box."""

    def delayDisplay(self, message: str, requestedDelay: int | None = None, msec: int | None = None) -> None:
        logging.info(message)

    def setUp(self) -> None:
        return
