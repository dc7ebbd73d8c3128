"""One study run — train one strategy, evaluate on the test split, save — per framework."""
