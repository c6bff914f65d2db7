"""Training loops: FTI4CIR / single-token pretraining, supervised heads."""
