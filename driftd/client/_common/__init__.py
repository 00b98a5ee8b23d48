"""What DriftClient and AsyncDriftClient share: point parsing, request building,
response reading and the mapping of gRPC statuses back to driftd errors.

The two clients differ only in how they send a request (a blocking call or an
awaited one), so every RPC is described here once, as a :class:`Call` (the stub
method, the request and a function that reads the response) or, for streams, as a
request plus a reader. Imports only grpc, grpcio-status, protobuf and numpy.

Modules: :mod:`.options` (target, retries, channel options, stubs), :mod:`.errors`
(statuses to driftd errors), :mod:`.parse` (user input), :mod:`.calls`
(collections, points, flow), :mod:`.capabilities` (monitoring, behaviours,
routing), :mod:`.streams` (streams and the resuming writer). This package
gathers what the clients use.
"""

from driftd.client._common.calls import (
    Call as Call,
)
from driftd.client._common.calls import (
    add_results as add_results,
)
from driftd.client._common.calls import (
    attach_collection as attach_collection,
)
from driftd.client._common.calls import (
    create_collection as create_collection,
)
from driftd.client._common.calls import (
    delete_collection as delete_collection,
)
from driftd.client._common.calls import (
    delete_points as delete_points,
)
from driftd.client._common.calls import (
    detect_chapters as detect_chapters,
)
from driftd.client._common.calls import (
    export_request as export_request,
)
from driftd.client._common.calls import (
    find_attractors as find_attractors,
)
from driftd.client._common.calls import (
    get_collection as get_collection,
)
from driftd.client._common.calls import (
    get_points as get_points,
)
from driftd.client._common.calls import (
    list_collections_page as list_collections_page,
)
from driftd.client._common.calls import (
    probe_flow as probe_flow,
)
from driftd.client._common.calls import (
    search as search,
)
from driftd.client._common.calls import (
    upsert_batches as upsert_batches,
)
from driftd.client._common.capabilities import (
    branch_context as branch_context,
)
from driftd.client._common.capabilities import (
    compare_windows as compare_windows,
)
from driftd.client._common.capabilities import (
    create_drift_rule as create_drift_rule,
)
from driftd.client._common.capabilities import (
    delete_drift_rule as delete_drift_rule,
)
from driftd.client._common.capabilities import (
    embedding_health as embedding_health,
)
from driftd.client._common.capabilities import (
    extract_facts as extract_facts,
)
from driftd.client._common.capabilities import (
    get_drift_rule as get_drift_rule,
)
from driftd.client._common.capabilities import (
    health_check as health_check,
)
from driftd.client._common.capabilities import (
    list_behaviors_page as list_behaviors_page,
)
from driftd.client._common.capabilities import (
    list_branches_page as list_branches_page,
)
from driftd.client._common.capabilities import (
    list_drift_rules_page as list_drift_rules_page,
)
from driftd.client._common.capabilities import (
    process_behaviors as process_behaviors,
)
from driftd.client._common.capabilities import (
    read_event as read_event,
)
from driftd.client._common.capabilities import (
    route_message as route_message,
)
from driftd.client._common.capabilities import (
    watch_request as watch_request,
)
from driftd.client._common.errors import (
    from_rpc_error as from_rpc_error,
)
from driftd.client._common.errors import (
    translate_errors as translate_errors,
)
from driftd.client._common.options import (
    DEFAULT_RETRIES as DEFAULT_RETRIES,
)
from driftd.client._common.options import (
    DEFAULT_TARGET as DEFAULT_TARGET,
)
from driftd.client._common.options import (
    RETRYABLE_METHODS as RETRYABLE_METHODS,
)
from driftd.client._common.options import (
    TLS as TLS,
)
from driftd.client._common.options import (
    PointLike as PointLike,
)
from driftd.client._common.options import (
    RetryPolicy as RetryPolicy,
)
from driftd.client._common.options import (
    Stubs as Stubs,
)
from driftd.client._common.options import (
    Time as Time,
)
from driftd.client._common.options import (
    channel_options as channel_options,
)
from driftd.client._common.options import (
    channel_security as channel_security,
)
from driftd.client._common.options import (
    parse_target as parse_target,
)
from driftd.client._common.parse import (
    parse_point as parse_point,
)
from driftd.client._common.parse import (
    parse_points as parse_points,
)
from driftd.client._common.streams import (
    StreamUpsertRequests as StreamUpsertRequests,
)
from driftd.client._common.streams import (
    UpsertAck as UpsertAck,
)
from driftd.client._common.streams import (
    WriteProgress as WriteProgress,
)
from driftd.client._common.streams import (
    WriterState as WriterState,
)
from driftd.client._common.streams import (
    read_ack as read_ack,
)
from driftd.client._common.streams import (
    read_step as read_step,
)
from driftd.client._common.streams import (
    read_trajectory as read_trajectory,
)
from driftd.client._common.streams import (
    simulate_request as simulate_request,
)
from driftd.client._common.streams import (
    trajectory_request as trajectory_request,
)
