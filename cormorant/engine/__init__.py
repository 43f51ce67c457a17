"""The engine: sequence state, block manager and scheduler (plain Python, no torch) and the step loop."""
