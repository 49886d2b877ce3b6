"""What both sides of the federation need: data, preprocessing, model, training, metrics."""
