//! The gRPC side: the service and its protobuf mapping, and the codec.

pub mod codec;
pub mod grpc;
pub mod server;
