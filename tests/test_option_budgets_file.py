"""--budgets-file / ini budgets_file, and what happens when the file is bad."""

from __future__ import annotations

import pytest
from conftest import write_test

TEST = """
@pytest.mark.model_budget
def test_simple(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
"""


def test_cli_path_is_relative_to_the_invocation_dir(project: pytest.Pytester) -> None:
    write_test(project, TEST)
    project.mkdir("ci")
    project.runpytest("--update-budgets", "--budgets-file", "ci/sizes.yaml").assert_outcomes(passed=1)
    assert (project.path / "ci" / "sizes.yaml").read_text().count("test_model.py::test_simple") == 1
    assert not (project.path / "budgets.yaml").exists()


def test_ini_path_is_relative_to_the_ini_file(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nbudgets_file = conf/budgets.yaml\n")
    write_test(project, TEST)
    project.mkdir("conf")
    project.runpytest("--update-budgets").assert_outcomes(passed=1)
    assert (project.path / "conf" / "budgets.yaml").exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"- just\n- a list\n", "must be a mapping with 'version' and 'entries', not a list"),
        (b"version: 1\nentries: {\n", "is not valid YAML"),
        (b"", "is empty"),
        (b"version: 1\nentries:\n  a:\n    macs: 1\n  a:\n    macs: 2\n", "duplicate key 'a'"),
        (b"version: 7\nentries: {}\n", "has version 7"),
    ],
)
def test_bad_file_is_a_usage_error_naming_it_and_is_left_alone(
    project: pytest.Pytester, content: bytes, fragment: str
) -> None:
    write_test(project, TEST)
    path = project.path / "budgets.yaml"
    path.write_bytes(content)
    for args in (["--model-budget"], ["--update-budgets"]):
        result = project.runpytest(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: pytest-modelbudget: {path}: *"])
        assert fragment in result.stderr.str()
        assert "Traceback" not in result.stderr.str() + result.stdout.str()
        assert path.read_bytes() == content


def test_bad_file_is_ignored_without_the_option(project: pytest.Pytester) -> None:
    write_test(project, TEST)
    (project.path / "budgets.yaml").write_text("[")
    project.runpytest().assert_outcomes(passed=1)


def test_directory_and_missing_directory(project: pytest.Pytester) -> None:
    write_test(project, TEST)
    project.mkdir("adir")
    result = project.runpytest("--model-budget", "--budgets-file", "adir")
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-modelbudget: *adir: is a directory; point --budgets-file at a file"]
    )
    result = project.runpytest("--update-budgets", "--budgets-file", "nowhere/budgets.yaml")
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-modelbudget: *nowhere/budgets.yaml: its directory * does not exist"]
    )


def test_read_only_file_during_update(project: pytest.Pytester) -> None:
    write_test(project, TEST)
    path = project.path / "budgets.yaml"
    path.write_text("version: 1\nentries: {}\n")
    path.chmod(0o444)
    result = project.runpytest("--update-budgets")
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-modelbudget: *budgets.yaml: is read-only; make it writable to update baselines"]
    )
    assert path.read_text() == "version: 1\nentries: {}\n"
