"""A pytest plugin for the run inside L1: one JSON line per test with its node id, outcome,
skip reason or failure text, so the host's run can show each inner test as its own
pass/fail/skip. Loaded with `-p support.nested.report`; writes to $VMM_NESTED_REPORT.

(JUnit XML would lose the node id's exact spelling; this keeps it.)
"""
import json
import os

_results = {}


def _text(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])          # (file, line, "Skipped: reason")
    return str(report.longreprtext or "")


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed",
                                                 "text": "", "duration": 0.0})
    entry["duration"] += report.duration
    if report.failed:
        # A failure in setup or teardown is the test's failure too; keep the first text.
        if entry["outcome"] != "failed":
            entry["outcome"], entry["text"] = "failed", f"[{report.when}] {_text(report)}"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        entry["text"] = getattr(report, "wasxfail", "") or _text(report)


def pytest_runtest_logfinish(nodeid, location):
    path = os.environ.get("VMM_NESTED_REPORT")
    if path and nodeid in _results:
        with open(path, "a") as f:   # flushed per test: a crashed L1 still tells what ran
            f.write(json.dumps(_results.pop(nodeid)) + "\n")
