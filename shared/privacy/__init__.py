"""Differentially private training of the mortality LSTM (DP-SGD with exact per-stay gradients)."""
