"""Typed records of what attention modules applied, and the recording that holds them.

A :class:`Record` is filled by :func:`attnviz.capture` (one per attention module, in the
order the modules ran); each kind has its own class, named for the question it answers:

=============== ===================== ==================================================
kind            record                the attention, as applied
=============== ===================== ==================================================
``channel``     :class:`ChannelRecord`     ``weights`` B x C: one weight per channel
``spatial``     :class:`SpatialRecord`     ``map`` B x H x W: one weight per position
``elementwise`` :class:`ElementwiseRecord` ``gate`` B x C x H x W: per channel and position
``axial``       :class:`AxialRecord`       ``height`` B x C x H and ``width`` B x C x W,
                                           applied as their product
``branch``      :class:`BranchRecord`      ``weights`` B x K x C: a choice among K paths
``context``     :class:`ContextRecord`     ``map`` B x H x W pooling weights, then a
                                           channel ``scale`` and/or additive ``shift``
``transform``   :class:`TransformRecord`   ``theta`` B x 2 x 3 and the sampled ``output``
``self``        :class:`SelfAttentionRecord` ``matrix`` B x heads x Q x K: where each
                                           query position looks
=============== ===================== ==================================================

Self-attention comes in several layouts with one interface (``matrix``, ``values``,
``query_map``, ``received``): dense (non-local, BoTNet, vision transformers), kept as a
fused kernel's factors (:class:`FactoredAttentionRecord`), local windows
(:class:`LocalAttentionRecord`, HaloNet), groups placed anywhere
(:class:`WindowAttentionRecord`, Swin, MaxViT) and separable row/column attention
(:class:`BilinearAttentionRecord`, BAT). Where a self-attention record's tokens lie on the
image is its typed ``record.geometry`` (:class:`Geometry`).

One module per job: :mod:`~attnviz.records.base` (:class:`Record`, :class:`Recording`,
:class:`Check`, :data:`KINDS`), :mod:`~attnviz.records.gates` (channel, spatial,
elementwise, axial, branch, context), :mod:`~attnviz.records.transforms` (spatial
transformers), :mod:`~attnviz.records.attention` (self-attention) and
:mod:`~attnviz.records.geometry` (:class:`Geometry`); every name is imported from here.
"""

from __future__ import annotations

from .attention import (
    BilinearAttentionRecord,
    FactoredAttentionRecord,
    LocalAttentionRecord,
    SelfAttentionRecord,
    WindowAttentionRecord,
)
from .base import KINDS, Check, Record, Recording
from .gates import (
    AxialRecord,
    BranchRecord,
    ChannelRecord,
    ContextRecord,
    ElementwiseRecord,
    SpatialRecord,
)
from .geometry import Geometry
from .transforms import TransformRecord, TwoStageTransformRecord

#: the largest whole matrix a factored record computes when asked (bytes; set
#: ``attnviz.records.MATRIX_LIMIT`` to change: read here when a matrix is asked for)
MATRIX_LIMIT = 2 * 2**30

__all__ = [
    "KINDS",
    "AxialRecord",
    "BilinearAttentionRecord",
    "BranchRecord",
    "ChannelRecord",
    "Check",
    "ContextRecord",
    "ElementwiseRecord",
    "FactoredAttentionRecord",
    "Geometry",
    "LocalAttentionRecord",
    "Record",
    "Recording",
    "SelfAttentionRecord",
    "SpatialRecord",
    "TransformRecord",
    "TwoStageTransformRecord",
    "WindowAttentionRecord",
]
