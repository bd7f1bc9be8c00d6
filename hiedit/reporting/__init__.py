"""The report: the paper's published numbers, the result tables and the figures of the workflow.

``inputs`` reads the result files (and names the file when one is malformed), ``paper`` holds the
numbers the paper publishes, ``tables`` builds Table 1 (main results) and Table 2 (ablations), and
``figures`` draws the K sweep, learning curves, mask usage, per-edit time and training curves.
"""
