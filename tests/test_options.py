"""Command-line options derived from a configuration dataclass: types, defaults, help and the way back."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from hsmr_data.options import add_options, options_from_args


@dataclass(frozen=True)
class Example:
    table_uri: str = field(metadata={"flag": "--table", "help": "label table URI"})
    latest: int = field(default=18_000, metadata={"help": "refine the latest M"})
    max_abs_beta: float = 2.0
    keep_passing: bool = True
    batch_size: int | None = None
    format: Literal["pipeline", "hsmr"] = "pipeline"
    indexes: tuple[str, ...] = field(default=(), metadata={"flag": "--index"})
    dataset_dirs: dict[str, str] = field(default_factory=lambda: {"synth": "storage/datasets/synth"})


def parse(argv: list[str]) -> Example:
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    return options_from_args(Example, parser.parse_args(argv))


def test_defaults_come_from_the_dataclass():
    assert parse(["--table", "T"]) == Example("T")


def test_every_kind_of_field_parses_into_its_type():
    config = parse(
        ["--table", "T", "--latest", "5", "--max-abs-beta", "1.5", "--no-keep-passing", "--batch-size", "64",
         "--format", "hsmr", "--index", "a.json", "--index", "b.json", "--dataset-dirs", "coco=/data/coco"]
    )  # fmt: skip
    assert config == Example("T", 5, 1.5, False, 64, "hsmr", ("a.json", "b.json"), {"coco": "/data/coco"})


def test_bad_values_and_missing_required_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse([])  # --table is required: the field has no default
    assert "--table" in capsys.readouterr().err
    for argv in (["--table", "T", "--latest", "many"], ["--table", "T", "--format", "zip"]):
        with pytest.raises(SystemExit):
            parse(argv)
    with pytest.raises(SystemExit):
        parse(["--table", "T", "--dataset-dirs", "no-name"])


def test_help_shows_the_fields_help_and_default():
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    text = parser.format_help()
    assert "refine the latest M (default: 18000)" in text and "{pipeline,hsmr}" in text


def test_a_field_without_an_option_kind_is_an_error():
    @dataclass
    class Nested:
        inner: Example

    with pytest.raises(TypeError, match="inner"):
        add_options(argparse.ArgumentParser(), Nested)


def test_an_instance_gives_the_defaults_even_of_required_fields():
    demo = Example("storage/labels/synth", latest=7, indexes=("demo.json",))
    parser = argparse.ArgumentParser()
    add_options(parser, Example, defaults=demo)
    assert options_from_args(Example, parser.parse_args([]), defaults=demo) == demo
    given = options_from_args(Example, parser.parse_args(["--index", "x.json", "--latest", "9"]), defaults=demo)
    assert given == Example("storage/labels/synth", latest=9, indexes=("x.json",))


def test_a_skipped_field_is_not_read_from_a_namespace_that_has_its_name():
    parser = argparse.ArgumentParser()
    add_options(parser, Example, skip=("latest",))
    parser.set_defaults(latest=print)  # e.g. the command's handler, stored under the field's name
    args = parser.parse_args(["--table", "T"])
    assert options_from_args(Example, args, skip=("latest",)) == Example("T")
