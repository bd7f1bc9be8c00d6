"""The report: the paper's published numbers, the result tables and the figures of the workflow.

``inputs`` reads the result files (and names the file when one is malformed), ``paper`` holds the
numbers the paper publishes, ``tables`` builds Table 1 (main results, with time and memory per
editor) and Table 2 (ablations), ``claims`` tests each claim of the paper and each target of the
study on the runs, ``figures`` draws the K sweep, learning curves, mask usage, per-edit time,
training curves and validation curves, and ``long_stream`` summarises and draws the long stream.
"""
