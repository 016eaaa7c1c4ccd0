//! The gRPC side: the service and its protobuf mapping, the codec, and the
//! dashboard page and CORS on the same listener.

pub(crate) mod codec;
pub mod dashboard;
pub mod grpc;
pub(crate) mod replies;
pub(crate) mod server;
