"""I/O: object storage, every storage path (the layout), readers of every input format, pre-processing into a pool."""
