"""Names of the volume's roles and states.

The string values are part of tandem's stable interface: they appear in
`tandem status --json`, in the DCS and in the metadata file, so they keep the
DRBD spelling operators already know and must never be renamed. Add members,
never rename or reuse one.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """Whether this node may be written by the application."""

    PRIMARY = "Primary"
    SECONDARY = "Secondary"


class DiskState(StrEnum):
    """What the local copy of the data is worth."""

    UP_TO_DATE = "UpToDate"  #: the latest data, may become Primary
    OUTDATED = "Outdated"  #: consistent but known to miss writes, never promoted
    INCONSISTENT = "Inconsistent"  #: a resync target in the middle of a resync
    DISKLESS = "Diskless"  #: no backing storage attached
    FAILED = "Failed"  #: the backing storage returned I/O errors

    @property
    def is_consistent(self) -> bool:
        """True if the data on disk is one coherent generation (may be old)."""
        return self in (DiskState.UP_TO_DATE, DiskState.OUTDATED)

    @property
    def has_disk(self) -> bool:
        """False if no I/O can complete on it: none attached, or failing (EIO)."""
        return self not in (DiskState.DISKLESS, DiskState.FAILED)


class ConnectionState(StrEnum):
    """Where the replication link to one peer stands.

    Live states, in the order a connection passes them: Connecting (TCP up,
    mutual authentication), WFReportParams (exchanging states and generation
    identifiers), WFBitMapS/WFBitMapT (exchanging dirty bitmaps before a resync),
    SyncSource/SyncTarget, Connected.

    Terminal states say why the link ended, which decides what the driver does
    next: StandAlone means "do not reconnect by yourself" (split brain,
    unrelated data, refused); the others mean "reconnect when you can".
    """

    STANDALONE = "StandAlone"
    UNCONNECTED = "Unconnected"  #: closed by a Disconnect from either side
    TIMEOUT = "Timeout"  #: the peer stopped answering pings
    NETWORK_FAILURE = "NetworkFailure"  #: the driver reported a failed send
    PROTOCOL_ERROR = "ProtocolError"  #: either side broke the protocol
    CONNECTING = "Connecting"
    WF_REPORT_PARAMS = "WFReportParams"
    WF_BITMAP_S = "WFBitMapS"
    WF_BITMAP_T = "WFBitMapT"
    CONNECTED = "Connected"
    SYNC_SOURCE = "SyncSource"
    SYNC_TARGET = "SyncTarget"

    @property
    def is_terminal(self) -> bool:
        """True once the link is over; a new connection object is needed."""
        return self in _TERMINAL

    @property
    def may_reconnect(self) -> bool:
        """True if the driver may open a new connection automatically."""
        return self.is_terminal and self is not ConnectionState.STANDALONE


#: link states past the handshake: the peer's writes reach the Secondary's disk,
#: or a resync is deciding what it lacks (StrEnum: they match the status strings)
LINK_UP = frozenset({ConnectionState.WF_BITMAP_S, ConnectionState.WF_BITMAP_T,
                     ConnectionState.SYNC_SOURCE, ConnectionState.SYNC_TARGET,
                     ConnectionState.CONNECTED})

_TERMINAL = frozenset(
    {
        ConnectionState.STANDALONE,
        ConnectionState.UNCONNECTED,
        ConnectionState.TIMEOUT,
        ConnectionState.NETWORK_FAILURE,
        ConnectionState.PROTOCOL_ERROR,
    }
)
