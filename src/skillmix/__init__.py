"""skillmix: multi-task parameter-efficient fine-tuning with mixtures of adapter skills."""
__version__ = "0.1.0"
