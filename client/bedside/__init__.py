"""What a hospital does with the trained model: score its stays, explain them, serve them to its
clinical systems."""
