"""Encoders of a task's data: ``proxy`` (pretrained proxy image models, task embeddings),
``features`` (forward-pass feature extraction for the estimators) and ``weights`` (PyTorch
and safetensors checkpoints into Flax). Import the modules themselves."""
