"""The paper's fine-tuning study (``benchmarks.study``) and the performance benchmarks
(``benchmarks.perf``) of dynft."""
