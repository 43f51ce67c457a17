"""The Batch API's storage and formats: the files vault, the job store and the JSONL lines."""
