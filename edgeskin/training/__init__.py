"""Training: the network, the training phases, the run folder, export to TFLite and Grad-CAM (TensorFlow)."""
