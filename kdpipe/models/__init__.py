"""Model zoo and safe weight loading."""

from kdpipe.models.input_check import check_input_size
from kdpipe.models.weights import load_state_dict_file
from kdpipe.models.zoo import (
    available,
    check_name,
    classes_in,
    create,
    create_pretrained,
    replace_head,
    torchvision_crop,
    torchvision_tag,
    weights_file,
    weights_label,
)

__all__ = [
    "available",
    "check_input_size",
    "check_name",
    "classes_in",
    "create",
    "create_pretrained",
    "load_state_dict_file",
    "replace_head",
    "torchvision_crop",
    "torchvision_tag",
    "weights_file",
    "weights_label",
]
