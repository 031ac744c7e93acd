"""litejobs parameters: one argument of a job function, as the API validates it.

A function's signature (type hints, defaults, `bounds=`) becomes a list of
Param; `jobs.Function.validate` checks a JSON object of arguments with them.
"""

import inspect
import json
import types
import typing

import guard


class ArgumentError(ValueError):
    """Arguments that do not fit a function; `field` names the culprit."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


_TYPES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}


class Param:
    """One argument of a function: its name, JSON type, default and range."""

    def __init__(self, name, annotation, default, bounds):
        self.name = name
        self.required = default is inspect.Parameter.empty
        self.default = None if self.required else default
        self.nullable = default is None
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            self.nullable = self.nullable or type(None) in args
            annotation = next((a for a in args if a is not type(None)), typing.Any)
        annotation = typing.get_origin(annotation) or annotation
        self.type = _TYPES.get(annotation, "any")
        self.bounds = bounds

    def to_dict(self):
        spec = {"name": self.name, "type": self.type, "required": self.required}
        if not self.required:
            spec["default"] = self.default
        if self.bounds:
            spec["minimum"], spec["maximum"] = self.bounds
        return spec

    def check(self, value):
        """The value to pass on, or ArgumentError."""
        if value is None and self.nullable:
            return None
        ok = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "bool": lambda v: isinstance(v, bool),
            "list": lambda v: isinstance(v, list),
            "dict": lambda v: isinstance(v, dict),
            "any": lambda v: True,
        }[self.type]
        if not ok(value):
            shown = repr(value) if isinstance(value, str) else json.dumps(value)
            raise ArgumentError(self.name, f"expected {self.type}, got {shown}")
        if self.type == "float":
            value = float(value)
        # NaN passes every range check and stalls time.sleep under gevent: no argument may hold one.
        where = guard.nonfinite_path(value, self.name)
        if where is not None:
            inside = "" if where == self.name else f" at {where}"
            raise ArgumentError(self.name, f"not a finite number{inside} (NaN and Infinity are refused)")
        if self.bounds:
            low, high = self.bounds
            if (low is not None and value < low) or (high is not None and value > high):
                raise ArgumentError(self.name, f"must be from {low} to {high}, got {value}")
        return value
