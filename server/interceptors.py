"""A server interceptor that counts every call by service, method and final status code.

The sync gRPC server gives interceptors the handler, not the outcome, so the handler's
behavior is wrapped: the code is read from the context after the behavior returns (or after
a streaming response is exhausted), or taken from the exception when it aborts.
"""

from __future__ import annotations

import grpc

from server.metrics import ServerStats


def _code_name(context: grpc.ServicerContext, outcome: str) -> str:
    """outcome: "ok" (returned), "error" (raised) or "cancelled" (stream closed under us)."""
    code = context.code()
    if code is None:
        return {"ok": "OK", "error": "UNKNOWN", "cancelled": "CANCELLED"}[outcome]
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class RequestCountingInterceptor(grpc.ServerInterceptor):
    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None       # unknown method: grpc answers UNIMPLEMENTED; labels stay bounded
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        record = lambda context, outcome: self.stats.count_request(  # noqa: E731
            service, method, _code_name(context, outcome))

        def wrap_unary_response(behavior):
            def wrapped(request_or_iterator, context):
                try:
                    response = behavior(request_or_iterator, context)
                except BaseException:
                    record(context, "error")
                    raise
                record(context, "ok")
                return response
            return wrapped

        def wrap_stream_response(behavior):
            def wrapped(request_or_iterator, context):
                outcome = "ok"
                try:
                    yield from behavior(request_or_iterator, context)
                except GeneratorExit:
                    outcome = "cancelled"
                    raise
                except BaseException:
                    outcome = "error"
                    raise
                finally:
                    record(context, outcome)
            return wrapped

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(handler.unary_unary), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary), handler.request_deserializer,
                handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream_response(handler.stream_stream), handler.request_deserializer,
            handler.response_serializer)
