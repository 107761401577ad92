"""What one trial computes: its config, data, model, batches, training step and loop, evaluation and diagnostics."""
