"""Slicer's ``parameterNodeWrapper`` rules, for running the module outside the Slicer application.

In the application the module's parameter node class is built by ``slicer.parameterNodeWrapper`` (Slicer 5.10).
Without it (slicer-core: tests, batch scripts) the module uses this stand-in, which follows Slicer on every point
that decides whether the panel works:

- which annotations can be serialised (Slicer's ``serializers.py``: int, float, str, bool, pathlib paths, MRML
  nodes, enums, ``None`` and unions of these, ``typing.Union`` or PEP 604 ``A | B``); anything else raises;
- every default is validated and written when the wrapper is created, as Slicer's ``_initMethod`` does: a union
  of node types without ``None`` cannot write its default ``None`` and raises ``TypeError: Unable to write value
  'None'``;
- which widget class connects to which type (Slicer's ``guiConnectors.py`` ``canRepresent`` rules, by class name):
  ``connectGui`` raises ``RuntimeError`` for a ``SlicerParameterName`` that has no connector.

Slicer's list, tuple, dict, QColor and parameter-pack serializers are not re-implemented: the stand-in refuses those
types (stricter than Slicer), so a new field of such a type needs them added here first.

Values are stored in the ``vtkMRMLScriptedModuleNode`` as Slicer stores them (nodes as node references, union
members under ``name.index``), so a parameter node written here reads the same in the application.
"""

from __future__ import annotations

import enum
import pathlib
import types
import typing
import weakref
from collections.abc import Callable
from typing import Annotated, Any

PARAMETER_NAME_PROPERTY = "SlicerParameterName"  # the widget property the .ui sets (Slicer's name)
PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)


# --- validators (slicer.parameterNodeWrapper.validators) ------------------------------------------------------------
class Validator:
    def validate(self, value: Any) -> None:
        raise NotImplementedError


class NotNone(Validator):
    def validate(self, value: Any) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsNone(Validator):
    def validate(self, value: Any) -> None:
        if value is not None:
            raise ValueError("Value must be None")


class IsInstance(Validator):
    def __init__(self, classtype: Any) -> None:
        self.classtype = classtype

    def validate(self, value: Any) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value: Any) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Choice(Validator):
    def __init__(self, choices: Any) -> None:
        self.choices = choices

    def validate(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


# --- types ------------------------------------------------------------------------------------------------------
def splitAnnotations(possiblyAnnotatedType: Any) -> tuple[Any, tuple]:
    """(type, annotations) of ``Annotated[type, ...]`` or of a plain type (Slicer's util.splitAnnotations)."""
    args = typing.get_args(Annotated[possiblyAnnotatedType, "stub annotation"])
    return args[0], args[1:-1]


def isUnion(type_: Any) -> bool:
    return typing.get_origin(type_) is typing.Union or isinstance(type_, types.UnionType)


def _vtkMRMLNode() -> type:
    import slicer  # noqa: PLC0415  (slicer-core or the application)

    return slicer.vtkMRMLNode


def isNode(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, _vtkMRMLNode())


def isNodeOrUnionOfNodes(datatype: Any) -> bool:
    """A node type, or a union of node types and None (what a qMRMLNodeComboBox can be connected to)."""
    underlying = splitAnnotations(datatype)[0]
    if isNode(underlying):
        return True
    if isUnion(underlying):
        members = [splitAnnotations(arg)[0] for arg in typing.get_args(underlying)]
        return all(m is type(None) or isNode(m) for m in members)
    return False


# --- serializers (slicer.parameterNodeWrapper.serializers) --------------------------------------------------------
class Serializer:
    """Writes one parameter's value into the parameter node and reads it back; validators run before a write."""

    def __init__(self, type_: Any, validators: list[Validator]) -> None:
        self.type = type_
        self.validators = validators

    def canSerialize(self, valueType: type) -> bool:
        raise NotImplementedError

    def default(self) -> Any:
        raise NotImplementedError

    def validate(self, value: Any) -> None:
        for validator in self.validators:
            validator.validate(value)

    def isIn(self, node: Any, name: str) -> bool:
        return bool(node.HasParameter(name))

    def write(self, node: Any, name: str, value: Any) -> None:
        self.validate(value)
        node.SetParameter(name, self._text(value))

    def _text(self, value: Any) -> str:
        return str(value)

    def read(self, node: Any, name: str) -> Any:
        return self.type(node.GetParameter(name))

    def remove(self, node: Any, name: str) -> None:
        node.UnsetParameter(name)


class NumberSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return valueType in (int, float)

    def default(self) -> Any:
        return 0


class StringSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return valueType is str

    def default(self) -> Any:
        return ""

    def read(self, node: Any, name: str) -> Any:
        return node.GetParameter(name)


class PathSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return valueType in PATH_TYPES

    def default(self) -> Any:
        return self.type()


class BoolSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return valueType is bool

    def default(self) -> Any:
        return False

    def _text(self, value: Any) -> str:
        return "True" if value else "False"

    def read(self, node: Any, name: str) -> Any:
        return node.GetParameter(name) == "True"


class EnumSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return isinstance(valueType, type) and issubclass(valueType, enum.Enum)

    def default(self) -> Any:
        return next(iter(self.type))

    def _text(self, value: Any) -> str:
        return value.name

    def read(self, node: Any, name: str) -> Any:
        return self.type[node.GetParameter(name)]


class NodeSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return isNode(valueType)

    def default(self) -> Any:
        return None

    def write(self, node: Any, name: str, value: Any) -> None:
        self.validate(value)
        # Slicer writes an empty parameter too, so that isIn() finds a parameter whose node is None.
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

    def read(self, node: Any, name: str) -> Any:
        return node.GetNodeReference(name)

    def remove(self, node: Any, name: str) -> None:
        node.UnsetParameter(name)
        node.RemoveNodeReferenceIDs(name)


class NoneSerializer(Serializer):
    def canSerialize(self, valueType: type) -> bool:
        return valueType is type(None)

    def default(self) -> Any:
        return None

    def _text(self, value: Any) -> str:
        return "True"

    def read(self, node: Any, name: str) -> Any:
        return None


class UnionSerializer(Serializer):
    """``A | B | ...``: the value is written by the first member that can serialise its type and validates it."""

    def __init__(self, type_: Any, validators: list[Validator], members: list[Serializer]) -> None:
        super().__init__(type_, validators)
        self.members = members

    def canSerialize(self, valueType: type) -> bool:
        return any(m.canSerialize(valueType) for m in self.members)

    def default(self) -> Any:
        if len(self.members) == 2 and isinstance(self.members[1], NoneSerializer):
            return None  # Optional[X] defaults to None
        return self.members[0].default()

    def isIn(self, node: Any, name: str) -> bool:
        return any(m.isIn(node, f"{name}.{index}") for index, m in enumerate(self.members))

    def _best(self, value: Any) -> tuple[int, Serializer]:
        raised = None
        for index, member in enumerate(self.members):
            if member.canSerialize(type(value)):
                try:
                    member.validate(value)
                    return index, member
                except Exception as error:  # noqa: BLE001  (Slicer tries the next member, then re-raises)
                    raised = error
        if raised is not None:
            raise raised
        raise TypeError(f"Unable to write value '{value}' of type '{type(value)}'")

    def write(self, node: Any, name: str, value: Any) -> None:
        self.validate(value)
        index, member = self._best(value)
        self.remove(node, name)
        member.write(node, f"{name}.{index}", value)

    def read(self, node: Any, name: str) -> Any:
        for index, member in enumerate(self.members):
            if member.isIn(node, f"{name}.{index}"):
                return member.read(node, f"{name}.{index}")
        raise KeyError(f"Unable to find value for name: {name}")

    def remove(self, node: Any, name: str) -> None:
        for index, member in enumerate(self.members):
            member.remove(node, f"{name}.{index}")


def createSerializer(type_: Any, validators: list[Validator] | None = None) -> Serializer:
    """The serializer Slicer would make for ``type_`` (annotations already split off); raises if there is none."""
    validators = list(validators or [])
    if isUnion(type_):
        args = typing.get_args(type_)
        members = []
        for arg in args:
            memberType, annotations = splitAnnotations(arg)
            members.append(createSerializer(memberType, [a for a in annotations if isinstance(a, Validator)]))
        return UnionSerializer(type_, validators, members)
    if type_ in (int, float):
        return NumberSerializer(type_, [NotNone(), IsInstance((int, float) if type_ is float else int), *validators])
    if type_ is str:
        return StringSerializer(type_, [NotNone(), IsInstance(str), *validators])
    if type_ in PATH_TYPES:
        return PathSerializer(type_, [NotNone(), IsInstance(type_), *validators])
    if type_ is bool:
        return BoolSerializer(type_, [NotNone(), IsInstance(bool), *validators])
    if isNode(type_):
        return NodeSerializer(type_, [IsInstance(type_), *validators])
    if type_ is type(None):
        return NoneSerializer(type_, [IsNone(), *validators])
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return EnumSerializer(type_, [IsInstance(type_), *validators])
    raise Exception(f"Unable to create serializer for type: {type_}")


# --- GUI connectors (slicer.parameterNodeWrapper.guiConnectors, canRepresent) -------------------------------------
SLIDER_WIDGETS = ("ctkSliderWidget", "qMRMLSliderWidget")
FLOAT_WIDGETS = ("QDoubleSpinBox", *SLIDER_WIDGETS, "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox")


def connectorKind(widgetClass: str, datatype: Any) -> str | None:
    """The connector Slicer picks for a widget class and a (possibly annotated) type, or None if there is none.

    Also raises where Slicer's connector constructors raise: a combo box without ``Choice``, a slider widget for an
    unbounded number.
    """
    type_, annotations = splitAnnotations(datatype)
    if type_ is bool and widgetClass in ("QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"):
        return "checked"
    if type_ is int and widgetClass in ("QSlider", "QSpinBox"):
        return "value"
    if type_ in (float, int) and widgetClass in FLOAT_WIDGETS:
        bounded = any(isinstance(a, WithinRange) for a in annotations)
        if widgetClass in SLIDER_WIDGETS and not bounded:
            raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
        return "value"
    if widgetClass in ("QComboBox", "ctkComboBox"):
        if type_ in (int, float, str, bool):
            if not any(isinstance(a, Choice) for a in annotations):
                raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
            return "choice"
        if isinstance(type_, type) and issubclass(type_, enum.Enum):
            return "enum"
    if type_ is str and widgetClass in ("QLineEdit", "QLabel"):
        return "text"
    if type_ is str and widgetClass == "QTextEdit":
        return "plainText"
    if type_ in PATH_TYPES and widgetClass == "ctkPathLineEdit":
        return "currentPath"
    if type_ in PATH_TYPES and widgetClass == "ctkDirectoryButton":
        return "directory"
    if widgetClass == "qMRMLNodeComboBox" and isNodeOrUnionOfNodes(datatype):
        return "node"
    return None


def _widgetClass(widget: Any) -> str:
    className = getattr(widget, "className", None)
    return className() if callable(className) else type(widget).__name__


class _Connector:
    """Keeps a widget and a parameter in step (the stand-in widgets emit PythonQt-style signals)."""

    SIGNALS = {"checked": "toggled(bool)", "value": "valueChanged(double)", "choice": "currentIndexChanged(int)",
               "enum": "currentIndexChanged(int)", "text": "textChanged(QString)", "currentPath":
               "currentPathChanged(QString)", "node": "currentNodeChanged(vtkMRMLNode*)"}

    def __init__(self, widget: Any, kind: str, datatype: Any) -> None:
        self.widget, self.kind = widget, kind
        _, annotations = splitAnnotations(datatype)
        self.choices = next((list(a.choices) for a in annotations if isinstance(a, Choice)), None)
        if kind == "choice":
            widget.clear()
            for choice in self.choices:
                widget.addItem(str(choice))
        if kind == "value":
            withinRange = next((a for a in annotations if isinstance(a, WithinRange)), None)
            if withinRange is not None:
                widget.minimum, widget.maximum = withinRange.minimum, withinRange.maximum
        if kind == "node":
            members = [splitAnnotations(a)[0] for a in typing.get_args(splitAnnotations(datatype)[0])] or \
                [splitAnnotations(datatype)[0]]
            widget.nodeTypes = [m.__name__ for m in members if m is not type(None)]
            widget.noneEnabled = True
        self.callback: Callable[[], None] | None = None
        widget.connect(self.SIGNALS[kind], self._changed)

    def _changed(self, *args: Any) -> None:
        if self.callback is not None:
            self.callback()

    def read(self) -> Any:
        if self.kind == "choice":
            return self.choices[self.widget.currentIndex]
        if self.kind == "node":
            return self.widget.currentNode()
        return getattr(self.widget, self.kind)

    def write(self, value: Any) -> None:
        if self.kind == "choice":
            if value in self.choices:
                self.widget.currentIndex = self.choices.index(value)
        elif self.kind == "node":
            self.widget.setCurrentNode(value)
        else:
            setattr(self.widget, self.kind, value)


# --- the wrapper ------------------------------------------------------------------------------------------------
class _Parameter:
    def __init__(self, name: str, serializer: Serializer, default: Any, unalteredType: Any) -> None:
        self.name, self.serializer, self.default, self.unalteredType = name, serializer, default, unalteredType


def parameterNodeWrapper(classtype: type | None = None) -> Any:
    """Build the parameter node class from its annotations like Slicer's decorator (usable with or without ())."""
    if classtype is None:
        return parameterNodeWrapper
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {}
    for name, hint in hints.items():
        type_, annotations = splitAnnotations(hint)
        validators = [a for a in annotations if isinstance(a, Validator)]
        try:
            serializer = createSerializer(type_, validators)
        except Exception as error:
            raise Exception(f"Unable to create serializer for {classtype} member {name}") from error
        defaultValue = getattr(classtype, name) if hasattr(classtype, name) else serializer.default()
        parameters[name] = _Parameter(name, serializer, defaultValue, hint)
        setattr(classtype, name, property(lambda self, n=name: self.getValue(n),
                                          lambda self, value, n=name: self.setValue(n, value)))
    classtype.allParameters = parameters
    classtype.__init__ = _init
    for method in (dataType, default, getValue, setValue, connectGui, disconnectGui, StartModify, EndModify,
                   AddObserver, RemoveObserver, Modified):
        setattr(classtype, method.__name__, method)
    classtype.dataType = staticmethod(lambda name: parameters[name].unalteredType)
    return classtype


def _init(self: Any, parameterNode: Any) -> None:
    self.parameterNode = parameterNode
    self._guis: dict[int, dict[str, _Connector]] = {}
    self._nextGuiTag = 0
    self._updatingGui = False
    for parameter in self.allParameters.values():
        if not parameter.serializer.isIn(parameterNode, parameter.name):
            parameter.serializer.write(parameterNode, parameter.name, parameter.default)


def dataType(name: str) -> Any:  # replaced per class by parameterNodeWrapper
    raise NotImplementedError


def default(self: Any, name: str) -> Any:
    return self.allParameters[name].default


def getValue(self: Any, name: str) -> Any:
    return self.allParameters[name].serializer.read(self.parameterNode, name)


def setValue(self: Any, name: str, value: Any) -> None:
    wasModifying = self.parameterNode.StartModify()
    try:
        self.allParameters[name].serializer.write(self.parameterNode, name, value)
    finally:
        self.parameterNode.EndModify(wasModifying)


def connectGui(self: Any, gui: Any) -> int:
    """Connect every widget of ``gui`` (a namespace of widgets) that has a ``SlicerParameterName``."""
    mapping = {}
    for widget in vars(gui).values():
        property_ = getattr(widget, "property", None)
        name = property_(PARAMETER_NAME_PROPERTY) if callable(property_) else None
        if not name:
            continue
        if name not in self.allParameters:
            raise ValueError(f"Cannot find a param with the given name: {name}")
        datatype = self.allParameters[name].unalteredType
        kind = connectorKind(_widgetClass(widget), datatype)
        if kind is None:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type "
                               f"'{_widgetClass(widget)}'.")
        mapping[name] = _Connector(widget, kind, datatype)
    tag = self._nextGuiTag
    self._nextGuiTag += 1
    self._guis[tag] = mapping
    for name, connector in mapping.items():
        connector.write(self.getValue(name))
        connector.callback = (lambda n=name, c=connector: None if self._updatingGui else self.setValue(n, c.read()))
    if not hasattr(self, "_guiObserver"):
        # A weak reference, as in Slicer: the node's observer must not keep the wrapper (and its widgets) alive.
        selfRef = weakref.ref(self)
        self._guiObserver = self.parameterNode.AddObserver(
            "ModifiedEvent", lambda caller, event: selfRef() is not None and _updateGui(selfRef()))
    return tag


def _updateGui(self: Any) -> None:
    if self._updatingGui:
        return
    self._updatingGui = True
    try:
        for mapping in self._guis.values():
            for name, connector in mapping.items():
                connector.write(self.getValue(name))
    finally:
        self._updatingGui = False


def disconnectGui(self: Any, tag: int | None) -> None:
    for connector in self._guis.pop(tag, {}).values():
        connector.callback = None


def StartModify(self: Any) -> int:  # noqa: N802  (Slicer's names)
    return self.parameterNode.StartModify()


def EndModify(self: Any, wasModified: int) -> Any:  # noqa: N802
    return self.parameterNode.EndModify(wasModified)


def AddObserver(self: Any, event: Any, callback: Any, priority: float = 0.0) -> int:  # noqa: N802
    return self.parameterNode.AddObserver(event, callback, priority)


def RemoveObserver(self: Any, tag: int) -> None:  # noqa: N802
    self.parameterNode.RemoveObserver(tag)


def Modified(self: Any) -> None:  # noqa: N802
    self.parameterNode.Modified()
