"""The production layer, one room per policy: auth, quotas, caching, telemetry, admission.

Engine-agnostic: modules here import cormorant.config, frontend outputs and plain types only,
never the engine loop, runner or torch.
"""
