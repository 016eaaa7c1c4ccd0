//! The public contract's generated code (`proto/`, compiled by build.rs
//! with protox and tonic-prost-build): the protobuf types, the client and
//! the server, the descriptors for reflection, and the server generated
//! again over pre-encoded replies (`reply_server`, what tenant-status serves).
//! A room of its own, so that the client commands depend on the contract
//! and not on the server.

// Generated code; its doc comments are the proto's.
#![allow(clippy::all)]

tonic::include_proto!("tenantstatus.v1");

/// The encoded descriptors of the proto and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("tenant_status_descriptor");

/// The server of the same service, generated again with the pre-encoded
/// replies of `serve::replies` (build.rs): what tenant-status serves.
#[allow(dead_code, unreachable_pub)]
pub(crate) mod reply_server {
    include!(concat!(env!("OUT_DIR"), "/encoded/tenantstatus.v1.rs"));
}

/// A status code's name as gRPC spells it, for metric labels (and the
/// client commands' messages).
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
