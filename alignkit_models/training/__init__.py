"""Training: configs and presets, the trainer with checkpoints and resume, experiment summaries."""
