//! The gRPC side: the service and its protobuf mapping, and the codec.

pub(crate) mod codec;
pub(crate) mod encoded;
pub mod grpc;
pub(crate) mod server;
