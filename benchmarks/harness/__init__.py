"""The benchmark runner's pieces: servers (what is measured), scenarios (how), the runner's process
control, and the report (table, chart, RESULTS.md). `benchmarks/run.py` ties them together."""
