"""The production layer between the HTTP server and the engine: auth (keys, keystore, routes,
auth middleware), quotas, admission, metrics, usage and logging. Engine-agnostic: modules here
import cormorant.config and plain types only, never the engine, runner or torch.
"""
