"""Reproduce the paper's traditional-vs-dynamic fine-tuning study on Keras or PyTorch."""
