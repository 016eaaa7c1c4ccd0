//! The protobuf codec of the generated service: prost's, with a 256-byte
//! encode buffer instead of tonic's default 8 KiB.
//!
//! Every open response stream keeps its encode buffer: once a message has
//! been split off to be sent, the buffer still holds the allocation it
//! came from. With tens of thousands of WatchTenant streams the default
//! buffer alone was over 8 KiB a stream (BENCHMARKS.md, fan-out memory),
//! and 1 KiB was still a fifth of a stream's memory. Our messages are a few
//! hundred bytes; the buffer grows when a snapshot or a ListTenants page
//! needs it (a lookup's answer makes one more small allocation).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Buffer size, and the yield threshold tonic's default uses.
fn settings() -> BufferSettings {
    BufferSettings::new(256, 32 * 1024)
}

/// `tonic_prost::ProstCodec` with `settings()`; named in build.rs.
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

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
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
