"""docpipe's benchmark: ``python -m docpipe.bench`` prints ratios against baselines measured in the same run.

One module per measurement (``embedding``, ``ingest``, ``langchain_baseline``,
``query``, ``hnsw_load``); ``report`` prints the tables and writes the JSON.
A benchmark, not a test: nothing here asserts on time.
"""
