"""The benchmark (`tartarus bench`, `make bench`): every figure beside a floor from the same run.

`runner.run()` starts a real server, runs the cases (`cases.py`) through the SDK and writes
`latest.json` + `latest.md` + `latest.png` (`report.py`); `check.check_report()` validates one.
"""
