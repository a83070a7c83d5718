"""skillmix: multi-task parameter-efficient fine-tuning with mixtures of adapter skills."""
from .config import SkillMixConfig
from .errors import SkillMixError
from .layers import LAYERS, METHODS
from .model import SkillMixModel, get_model, load_config, load_model

__version__ = "0.1.0"
__all__ = ["LAYERS", "METHODS", "SkillMixConfig", "SkillMixError", "SkillMixModel", "get_model", "load_config",
           "load_model", "__version__"]
