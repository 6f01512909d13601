"""Run plumbing shared by every layer (one helper per job): lazy exports and dotted paths (`imports`), content
fingerprints (`fingerprint`), resumable output directories (`resume`) and config field factories
(`config_fields`).

Nothing is imported here, so `import trl_omni.utils.imports` stays free of torch.
"""
