"""The engine: sequence state, block manager, scheduler (no torch) and the step loop."""
