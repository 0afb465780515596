"""Training: loss, optimisation, validation metrics, fitness and the trainer."""
