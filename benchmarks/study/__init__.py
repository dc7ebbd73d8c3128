"""The paper's study of fine-tuning strategies: ``python -m benchmarks.study``.

Sub-packages: ``data`` (sources, phantom, split, imbalance handling, batches), ``models``
(backbone registries per framework), ``runners`` (one run of one strategy per framework),
``results`` (metrics, statistics, report, figures).
"""
