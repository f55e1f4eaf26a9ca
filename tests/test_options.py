"""Each option is declared once (pipeline/options.py): the CLI's options, the checks, the
manifest's columns and the docs' tables are all made from the declaration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import pytest
import typer
from typer.testing import CliRunner

from pipeline.api import RuntimeOptions, StyleParams
from pipeline.bulk.manifest import COLUMNS, coerce_param
from pipeline.bulk.runner import RunOptions
from pipeline.cli import app
from pipeline.cli.options import with_options
from pipeline.cli.reference import cli_table, manifest_table, rendered
from pipeline.errors import InputError
from pipeline.options import check, coerce, option, typed_again

runner = CliRunner()


@dataclass(frozen=True)
class Glow:
    """A record with one new option, as a feature would add one."""

    glow: float = option(0.25, "How much the output glows.", lo=0, hi=1)
    passes: tuple[int, ...] = option((1, 2), "Passes to glow in.")


def test_a_new_option_is_one_field():
    """The field alone gives the command its option (default, help, range), the check, the
    parsing of a cell, and a row in each docs table."""
    seen = []
    cli = typer.Typer(rich_markup_mode=None)

    @cli.command()
    @with_options(extra=Glow)
    def show(*, extra: Glow) -> None:
        check(extra)
        seen.append(extra)

    help_text = runner.invoke(cli, ["--help"], terminal_width=200).output
    assert "--glow" in help_text and "How much the output glows. Between 0 and 1." in help_text
    assert "[default: 0.25]" in help_text and "[default: 1,2]" in help_text
    assert runner.invoke(cli, ["--glow", "0.5", "--passes", "3,4"]).exit_code == 0
    assert seen == [Glow(0.5, (3, 4))]
    result = runner.invoke(cli, ["--glow", "2"])
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == "glow must be between 0 and 1, got 2.0"
    assert coerce(Glow, "passes", "5, 6") == (5, 6) and coerce(Glow, "glow", "1") == 1.0
    assert "| `glow` | float | `0.25` | How much the output glows. Between 0 and 1. |" in (
        manifest_table(Glow))
    assert "| `--passes` | `1,2` | Passes to glow in. Comma-separated. |" in cli_table(Glow)


@pytest.mark.parametrize("records", [
    (Glow(0.5, (3, 4)), RuntimeOptions(precision="fp32", channels_last=False, winograd=True,
                                        cuda_graphs=False, trt_fp16=True, block_size=512)),
    (Glow(), RuntimeOptions()),  # nothing to repeat
    (Glow(passes=(7,)), RuntimeOptions(channels_last=True, providers="cuda,cpu")),
    (Glow(1.0), RuntimeOptions()),  # typed `--glow 1`
])
def test_options_typed_again_are_parsed_back_to_the_same_records(records, monkeypatch):
    """A resume hint repeats the options a command was given (typed_again): typed as it says,
    they give the same records, words (on/off/auto), lists and --no- flags included."""
    monkeypatch.delenv("STYLE_PIPELINE_CACHE", raising=False)  # the tests' cache: not typed
    seen = []
    cli = typer.Typer(rich_markup_mode=None)

    @cli.command()
    @with_options(extra=Glow, options=RuntimeOptions)
    def show(*, extra: Glow, options: RuntimeOptions) -> None:
        seen.append((extra, options))

    words = typed_again(*records)
    result = runner.invoke(cli, words)
    assert result.exit_code == 0, (words, result.output)
    assert seen == [records], words
    assert (words == []) == (records == (Glow(), RuntimeOptions()))
    assert "1.0" not in words
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", "/elsewhere")  # given by the environment
    assert typed_again(records[0], dataclasses.replace(records[1], cache="/elsewhere")) == words


def test_every_parameter_is_an_option_a_column_and_documented():
    stylize_help = runner.invoke(app, ["stylize", "--help"], terminal_width=400).output
    run_help = runner.invoke(app, ["run", "--help"], terminal_width=400).output
    for f in fields(StyleParams):
        assert f"--{f.name.replace('_', '-')}" in stylize_help
        assert (f.metadata["option"].column or f.name) in COLUMNS
    for owner, text in ((RunOptions, run_help), (RuntimeOptions, run_help),
                        (RuntimeOptions, stylize_help)):
        for f in fields(owner):
            if "option" in f.metadata:
                flags = f.metadata["option"].flags or (f"--{f.name.replace('_', '-')}",)
                assert flags[0] in text, (owner.__name__, f.name)


def test_the_docs_tables_are_current():
    """`make docs` writes them; a changed option without it fails here."""
    stale = [str(path) for path, text in rendered().items() if path.read_text() != text]
    assert not stale, f"out of date, run `make docs`: {stale}"


@pytest.mark.parametrize(("name", "cell", "value"), [
    ("size", "256", 256), ("size", 256.0, 256), ("tol", "0", 0.0),
    ("preserve_colors", "yes", True), ("style_layers", "relu1_1, relu2_1", ("relu1_1", "relu2_1")),
    ("style_blend", [1, 3], (1.0, 3.0)), ("init", "noise", "noise"),
])
def test_cells_take_the_declared_type(name, cell, value):
    assert coerce_param(name, cell) == value


def test_run_options_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="batch_size must be >= 0, got -1"):
        RunOptions(tmp_path, batch_size=-1).validate()
    with pytest.raises(InputError, match="distributor must be one of local, ray"):
        RunOptions(tmp_path, distributor="slurm").validate()


def test_a_relative_cache_is_the_command_s_folder_s(tmp_path, monkeypatch):
    """Made absolute where it is given: a worker or a Ray actor starts in another folder."""
    import os

    from pipeline.io.files import CACHE_ENV, use_cache

    monkeypatch.chdir(tmp_path)
    assert RuntimeOptions(cache="c").cache == str(tmp_path / "c")
    assert RuntimeOptions(cache="s3://bucket/cache").cache == "s3://bucket/cache"
    assert RuntimeOptions().cache is None
    use_cache("d")  # a command's --cache-dir, for the processes it starts
    assert os.environ[CACHE_ENV] == str(tmp_path / "d")
