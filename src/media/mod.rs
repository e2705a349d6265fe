//! The media plane: RTP/RTCP header access, SRTP/SRTCP transforms and the
//! port allocator. Nothing here allocates, locks or logs per packet.

pub mod batch;
pub mod dtmf;
pub mod ice_tcp;
pub mod payload_map;
pub mod ports;
pub mod reception;
pub mod relay;
pub mod ring;
pub mod rtp;
pub mod srtp;
pub mod stats;
pub mod transcode;
