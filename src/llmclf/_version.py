"""The version of llmclf, written into every run's config.yaml and report."""

__version__ = "0.1.0"
