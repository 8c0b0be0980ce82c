"""Model zoo and safe weight loading."""

from kdpipe.models.input_check import check_input_size
from kdpipe.models.weights import load_state_dict_file
from kdpipe.models.zoo import available, check_name, create, replace_head

__all__ = [
    "available",
    "check_input_size",
    "check_name",
    "create",
    "load_state_dict_file",
    "replace_head",
]
