"""The contract tests fail a component that breaks a rule, each the rule it breaks.

``broken_components.py`` holds a flag-file plug-in and a copy backend that
keep every rule, and one variant of each per rule broken; a separate pytest
runs the contract against all of them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent

#: class -> the contract tests it must fail (every other one passes or skips).
EXPECTED_FAILURES = {
    "TestFlag": set(),
    "TestNotIdempotent": {
        "test_unquiesce_is_idempotent",
        "test_unquiesce_without_a_quiesce",
        "test_quiesce_with_an_expired_deadline_returns_and_unquiesce_resumes",  # never quiesced
        "test_crash_safety_as_declared",  # unquiesce after the watchdog thawed
        "test_each_capture_mode_completes_and_releases",  # unquiesce again before release
    },
    "TestLeaky": {"test_no_secret_in_describe_or_paths"},
    "TestIgnoresDeadline": {"test_quiesce_with_an_expired_deadline_returns_and_unquiesce_resumes"},
    "TestLiesAboutCrashes": {"test_crash_safety_as_declared"},
    "TestWrongField": {"test_config_errors_name_the_field"},
    "TestCopy": set(),
    "TestNoDiscard": {"test_discard_removes_a_crashed_runs_leftovers"},
    "TestDeleteOnce": {"test_delete_of_a_gone_artifact_succeeds"},
    "TestLeavesPartial": {"test_a_cancelled_stage_leaves_nothing"},
    "TestRestoresElsewhere": {"test_restore_puts_every_file_at_its_original_path"},
}


@pytest.mark.slow
def test_each_broken_rule_fails_its_contract_test_and_nothing_else(tmp_path: Path) -> None:
    shutil.copy(HERE / "broken_components.py", tmp_path / "test_under_contract.py")
    report = tmp_path / "report.xml"
    # Not through the CLI test: these classes are registered by no entry point.
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-k", "not through_the_cli", f"--junitxml={report}", "test_under_contract.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    failed: dict[str, set[str]] = {name: set() for name in EXPECTED_FAILURES}
    ran = 0
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - our own report
        ran += 1
        cls = case.get("classname", "").rpartition(".")[2]
        if case.find("failure") is not None or case.find("error") is not None:
            failed.setdefault(cls, set()).add(case.get("name", ""))
    assert ran >= 5 * len(EXPECTED_FAILURES), f"only {ran} contract tests ran"
    assert failed == EXPECTED_FAILURES
