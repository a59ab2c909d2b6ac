"""Pictures of the zoo's models and runs, behind the ``nat-visualize`` command.

- :mod:`.attention`: a query's attention weights over its (dilated) neighborhood, from the
  model's own forward.
- :mod:`.receptive_field`: the gradient of one output position of a level w.r.t. the input.
- :mod:`.saliency`: vanilla-gradient / gradient x input class saliency.
- :mod:`.runs`: loss, learning-rate and accuracy curves of nat-train runs.
- :mod:`.figure`: pixel-exact panel layout and PNG output; :mod:`.inputs`: models, images and
  argument checks; :mod:`.cli`: the command line.

matplotlib (the ``plot`` extra) is needed to draw; it is imported only then.
"""

from .attention import AttentionCapture, capture_attention, draw_attention
from .figure import MatplotlibMissing, Picture, VisualizeError
from .receptive_field import ReceptiveField, draw_receptive_fields, receptive_field
from .runs import draw_runs
from .saliency import Saliency, draw_saliency, saliency

__all__ = [
    "AttentionCapture",
    "MatplotlibMissing",
    "Picture",
    "ReceptiveField",
    "Saliency",
    "VisualizeError",
    "capture_attention",
    "draw_attention",
    "draw_receptive_fields",
    "draw_runs",
    "draw_saliency",
    "receptive_field",
    "saliency",
]
