import pytest
from typer.testing import CliRunner

from benchmark import catalog
from benchmark.cli import app
from benchmark.registry import Registry, UnknownNameError

runner = CliRunner()


def test_unknown_name_lists_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1, "first")
    reg.add("b", 2, "second")
    with pytest.raises(UnknownNameError) as info:
        reg.get("c")
    assert "unknown widget 'c'" in str(info.value) and "a, b" in str(info.value)


def test_duplicate_registration_is_an_error():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="twice"):
        reg.add("a", 2)


def test_methods_registry_has_the_skeleton_methods():
    names = catalog.methods().names()
    assert {"supervised", "mean-teacher"} <= set(names)
    with pytest.raises(UnknownNameError, match="supervised"):
        catalog.methods().get("nope")


@pytest.mark.parametrize("kind, expected", [("methods", "mean-teacher"), ("datasets", "synthetic-acdc"),
                                            ("suites", "acdc-3pct")])
def test_bench_ls(kind, expected):
    result = runner.invoke(app, ["ls", kind])
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_unknown_suite_exits_nonzero_with_valid_names():
    result = runner.invoke(app, ["run", "--suite", "nope", "--no-track"])
    assert result.exit_code != 0
    assert "unknown suite 'nope'" in result.output and "demo" in result.output


def test_unknown_method_exits_nonzero_with_valid_names():
    result = runner.invoke(app, ["run", "--suite", "demo", "--methods", "magic", "--no-track"])
    assert result.exit_code != 0
    assert "unknown method 'magic'" in result.output and "mean-teacher" in result.output


def test_unknown_executor_is_refused():
    result = runner.invoke(app, ["run", "--suite", "demo", "--executor", "slurm", "--no-track"])
    assert result.exit_code != 0 and "valid executors: local, ray" in result.output
