#!/usr/bin/env python3
"""Hubble Observer client for the flows integration test: the "client that is not Rust".

The Rust side serves the Hubble Observer gRPC API from our own flow.proto and
observer.proto. This script does not share any Rust code or pre-generated
stubs: it compiles those same .proto files with grpc_tools.protoc at run time,
then calls ServerStatus and GetFlows over an insecure channel and prints one
JSON line per result. Flow fields are read from the generated classes (not via
json_format), so the test checks that the field numbers on the wire decode to
the expected fields in an independent protobuf implementation.

Output (stdout, one JSON object per line):
  {"server_status": {...}}
  {"flow": {...}, "node_name": ...}      for each flow response
  {"lost_events": {...}}                 for each lost-events response

Exit status: 0 on success, 1 if code generation fails, 2 on a gRPC error.
"""

import argparse
import json
import os
import sys

import grpc
import grpc_tools
from google.protobuf import json_format
from grpc_tools import protoc


def generate(proto_dir: str, out_dir: str) -> None:
    """Compile flow.proto and observer.proto into out_dir and make them importable."""
    os.makedirs(out_dir, exist_ok=True)
    wkt_dir = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{wkt_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "flow.proto"),
        os.path.join(proto_dir, "observer.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed (exit {rc}) generating code from {proto_dir} into {out_dir}")
    sys.path.insert(0, out_dir)


def policies(items) -> list:
    return [f"{p.kind}/{p.namespace}/{p.name}" for p in items]


def flow_to_dict(flow, flow_pb2) -> dict:
    protocol = flow.l4.WhichOneof("protocol")
    l4 = getattr(flow.l4, protocol) if protocol else None
    tcp_flags = []
    if protocol == "TCP":
        tcp_flags = [f.name for f, value in l4.flags.ListFields() if value]
    svc = flow.destination_service
    return {
        "time_s": flow.time.seconds,
        "verdict": flow_pb2.Verdict.Name(flow.verdict),
        "drop_reason_desc": flow_pb2.DropReason.Name(flow.drop_reason_desc),
        "source_ip": flow.IP.source,
        "destination_ip": flow.IP.destination,
        "source_namespace": flow.source.namespace,
        "source_pod": flow.source.pod_name,
        "source_labels": list(flow.source.labels),
        "destination_namespace": flow.destination.namespace,
        "destination_pod": flow.destination.pod_name,
        "protocol": protocol or "",
        "source_port": getattr(l4, "source_port", 0),
        "destination_port": getattr(l4, "destination_port", 0),
        "tcp_flags": tcp_flags,
        "destination_service": f"{svc.namespace}/{svc.name}" if svc.name else "",
        "traffic_direction": flow_pb2.TrafficDirection.Name(flow.traffic_direction),
        "type": flow_pb2.FlowType.Name(flow.Type),
        "node_name": flow.node_name,
        "is_reply": flow.is_reply.value if flow.HasField("is_reply") else None,
        "summary": flow.Summary,
        "ingress_denied_by": policies(flow.ingress_denied_by),
        "egress_denied_by": policies(flow.egress_denied_by),
        "ingress_allowed_by": policies(flow.ingress_allowed_by),
        "egress_allowed_by": policies(flow.egress_allowed_by),
        "uuid": flow.uuid,
        "has_extensions": flow.HasField("extensions"),
        # What `hubble observe -o json` and any protojson printer do with it: fails on an Any
        # of a type it does not know.
        "json": json_ok(flow),
    }


def json_ok(message) -> bool:
    try:
        json_format.MessageToJson(message)
        return True
    except Exception:  # noqa: BLE001 - any failure to print is the finding
        return False


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", required=True, help="directory holding flow.proto and observer.proto")
    parser.add_argument("--out-dir", required=True, help="scratch directory for the generated code")
    parser.add_argument("--target", required=True, help="gRPC target, e.g. unix:///path/to/sock or 127.0.0.1:4244")
    parser.add_argument("--last", type=int, default=100, help="number of flows to request")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call timeout in seconds")
    args = parser.parse_args()

    generate(args.proto_dir, args.out_dir)
    import flow_pb2
    import observer_pb2
    import observer_pb2_grpc

    try:
        # For a unix socket grpc-core (since 1.57) puts the socket path, percent-encoded, in
        # :authority, which the agent's HTTP/2 server (h2) refuses with RST_STREAM: it accepts
        # only a valid authority (hyperium/h2#487, open). grpc-go and grpc-java name
        # localhost; so does this client.
        options = [("grpc.default_authority", "localhost")]
        with grpc.insecure_channel(args.target, options=options) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)

            status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=args.timeout)
            emit({"server_status": {
                "num_flows": status.num_flows,
                "max_flows": status.max_flows,
                "seen_flows": status.seen_flows,
                "version": status.version,
            }})

            request = observer_pb2.GetFlowsRequest(number=args.last)
            for response in stub.GetFlows(request, timeout=args.timeout):
                kind = response.WhichOneof("response_types")
                if kind == "flow":
                    emit({"flow": flow_to_dict(response.flow, flow_pb2), "node_name": response.node_name})
                elif kind == "lost_events":
                    lost = response.lost_events
                    emit({"lost_events": {
                        "source": flow_pb2.LostEventSource.Name(lost.source),
                        "num_events_lost": lost.num_events_lost,
                    }})
            # Cilium's Observer refuses the oldest flows and following at once.
            try:
                for _ in stub.GetFlows(observer_pb2.GetFlowsRequest(first=True, follow=True), timeout=args.timeout):
                    break
                emit({"first_and_follow": "OK"})
            except grpc.RpcError as err:
                emit({"first_and_follow": err.code().name})
    except grpc.RpcError as err:
        print(f"grpc error: {err.code()} {err.details()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
