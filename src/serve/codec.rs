//! The protobuf codec of the generated service: prost's, with a small
//! encode buffer instead of tonic's default 8 KiB.
//!
//! Every open response stream keeps its encode buffer: once a message has
//! been split off to be sent, the buffer still holds the allocation it
//! came from. With tens of thousands of WatchTenant streams the default
//! buffer alone was over 8 KiB a stream (BENCHMARKS.md, fan-out memory),
//! and 1 KiB was still a fifth of a stream's memory: a watch stream's is
//! 256 bytes, and grows when a snapshot needs it. A unary answer's buffer
//! lives for one call: 1 KiB, so that a lookup's answer (about 300 bytes)
//! takes one allocation.

use std::{any::TypeId, marker::PhantomData};

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Buffer size by what is encoded, and the yield threshold tonic's
/// default uses.
fn settings<T: 'static>() -> BufferSettings {
    BufferSettings::new(buffer_size::<T>(), 32 * 1024)
}

fn buffer_size<T: 'static>() -> usize {
    if TypeId::of::<T>() == TypeId::of::<crate::serve::replies::WatchReply>() {
        256
    } else {
        1024
    }
}

/// `tonic_prost::ProstCodec` with `settings()`; named in build.rs.
pub(crate) struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings::<T>())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings::<U>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::replies::{TenantReply, WatchReply};

    #[test]
    fn watch_streams_keep_a_small_buffer_and_answers_a_roomier_one() {
        assert_eq!(buffer_size::<WatchReply>(), 256);
        assert_eq!(buffer_size::<TenantReply>(), 1024);
    }
}
