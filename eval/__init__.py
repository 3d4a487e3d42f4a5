"""HOW a model is judged: lm-eval suites run offline from a local data mirror, a sandbox for
generated code, a results cache, and the report. Imports recipes/ only (never pipelines/).

Public API: `eval.harness.run_suites`, `eval.harness.flat_metrics`, `eval.report.write_report`.
Heavy libraries (lm_eval, torch, transformers) are imported inside the functions that need them.
"""
