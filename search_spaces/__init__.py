"""What a candidate can be: `ArchSpec`, the attention zoo, the model builder, and
the named search spaces. Needs only torch."""

from search_spaces.arch_spec import ArchSpec, LayerSpec, SpecError
from search_spaces.model import build_model, count_parameters
from search_spaces.space import SearchSpace, SpaceError, TaskShape, builtin_spaces, load_space

__all__ = [
    "ArchSpec", "LayerSpec", "SpecError", "build_model", "count_parameters",
    "SearchSpace", "SpaceError", "TaskShape", "builtin_spaces", "load_space",
]
