"""The channel graph: trace a model, find its coupled channel groups, say what can shrink.

* :mod:`.ops` -- the one table of layer and op kinds (torch only);
* :mod:`.trace` -- fx trace into a networkx graph of channel slots (``trace.trace``);
* :mod:`.groups` -- :class:`Slice`, :class:`ChannelGroup`, :func:`channel_groups`,
  :func:`inspect`.

Names are imported on first use, so ``archdiscover.graph.ops`` costs torch only.
"""

from .._lazy import lazy

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "InspectReport",
    "Slice",
    "TraceError",
    "channel_groups",
    "inspect",
]

__getattr__, __dir__ = lazy(
    __name__,
    {
        "ChannelGraph": ".trace",
        "TraceError": ".trace",
        "ChannelGroup": ".groups",
        "InspectReport": ".groups",
        "Slice": ".groups",
        "channel_groups": ".groups",
        "inspect": ".groups",
    },
)
