"""Command-line options derived from a step's configuration dataclass, so defaults live in one place.

Each step's front door is `run(config)`, where the config is a flat dataclass of JSON-able fields (what a
Prefect flow takes as its one typed parameter, and `prefect deployment run ... -p config='{...}'` fills).
`add_options` turns its fields into argparse options (type, default, help, choices, required), and
`options_from_args` builds the dataclass back from the parsed arguments:

    @dataclass(frozen=True)
    class RefineOptions:
        table_uri: str = field(default=..., metadata={"flag": "--table", "help": "label table URI"})
        latest: int = field(default=RefineConfig.latest, metadata={"help": "refine the latest M predictions"})

Field types: str, int, float, bool (--x / --no-x), `X | None`, `Literal[...]` (choices), tuple/list of
a scalar (a repeatable option) and `dict[str, str]` (a repeatable NAME=VALUE option). Field metadata:
"flag" (the option's name; default: `SHORT_FLAGS`, else `--field-name`) and "help".
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

_MISSING = dataclasses.MISSING
# The project's short names of common fields, the same in every command.
SHORT_FLAGS = {
    "table_uri": "--table",
    "models_root": "--models",
    "truth_path": "--truth",
    "predictions_path": "--predictions",
    "out_dir": "--out",
    "out_path": "--out",
}


def _strip_optional(kind: Any) -> Any:
    """T of `T | None` (and of `Optional[T]`); other types unchanged."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _default(field: dataclasses.Field) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return _MISSING


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _option(field: dataclasses.Field, kind: Any, defaults: Any) -> dict[str, Any]:
    """argparse keywords of one field; its default from the instance `defaults`, else the field's."""
    default = _default(field) if defaults is None else getattr(defaults, field.name)
    help_text = field.metadata.get("help", "")
    kind = _strip_optional(kind)
    origin = typing.get_origin(kind)
    options: dict[str, Any] = {"dest": field.name}
    if kind is bool:
        options |= {"action": argparse.BooleanOptionalAction, "default": default}
    elif origin is Literal:
        choices = typing.get_args(kind)
        options |= {"choices": choices, "type": type(choices[0]), "default": default}
    elif origin in (tuple, list):
        item = typing.get_args(kind)[0]
        options |= {"action": "append", "type": item, "default": None}
        help_text += " (repeatable)"
    elif origin is dict:
        options |= {"action": "append", "type": _name_value, "default": None, "metavar": "NAME=VALUE"}
        help_text += " (repeatable)"
    elif kind in (str, int, float):
        options |= {"type": kind, "default": default}
    else:
        raise TypeError(f"{field.name}: no command-line option for a field of type {kind!r}")
    if default is _MISSING:
        options |= {"required": True, "default": None}
    elif default not in (None, (), [], {}) and kind is not bool:
        help_text += f" (default: {default})"
    options["help"] = help_text.strip() or None
    return options


def add_options(
    parser: argparse.ArgumentParser, config_type: type, skip: tuple[str, ...] = (), defaults: Any = None
) -> None:
    """One option per field of the dataclass `config_type` (except those in `skip`); `defaults`, an instance,
    gives the defaults where they differ from the type's (e.g. the demo's paths for a required field)."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        if field.name in skip:
            continue
        flag = field.metadata.get("flag") or SHORT_FLAGS.get(field.name) or "--" + field.name.replace("_", "-")
        option = _option(field, hints[field.name], defaults)
        if option.get("action") is not argparse.BooleanOptionalAction and "choices" not in option:
            option.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())  # --table TABLE
        parser.add_argument(flag, **option)


def options_from_args(
    config_type: type, args: argparse.Namespace, defaults: Any = None, skip: tuple[str, ...] = (), **values: Any
):
    """The `config_type` of the parsed options (`defaults` and `skip` as given to `add_options`: a skipped
    field is not read from `args`, where another option may have its name); `values` set fields that have
    no option, and the instance `defaults` the repeatable ones not given."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        if field.name in values or field.name in skip or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        origin = typing.get_origin(_strip_optional(hints[field.name]))
        if value is None and origin in (tuple, list, dict):
            continue  # the option was not given: the field's default
        if origin is tuple:
            value = tuple(value)
        elif origin is dict:
            value = dict(value)
        values[field.name] = value
    return config_type(**values) if defaults is None else dataclasses.replace(defaults, **values)
