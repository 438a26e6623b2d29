"""The classifier: loading checkpoints, preprocessing, labels, runtimes and the micro-batcher feeding it."""
