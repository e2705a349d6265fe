//! The built-in echo endpoint: calls to `[echo] number` are answered inside
//! the gateway, which returns the caller's own audio.
//!
//! The echo stands where a SIP peer's media would: the call's SIP leg on the
//! relay sends plain RTP to a loopback socket here, which sends every RTP
//! packet straight back (RTCP is not reflected: the browser would read its
//! own reports as the far end's). So an echo call crosses the same relay
//! path, payload-type map and DTMF handling as a SIP call. This is a test
//! tool, not the hot path: one small tokio task per echo call.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::sdp::codecs::answer_codecs;
use crate::sdp::{Codec, SdpError};

/// The echo's answer to an offer: the first audio codec offered (the
/// caller's preference) and telephone-event at its clock rate, so DTMF the
/// caller sends comes back as well.
pub fn answer(offered: &[Codec]) -> Result<Vec<Codec>, SdpError> {
    let first = offered
        .iter()
        .find(|c| c.is_carried_audio())
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: "no audio codec the echo can return".into(),
        })?;
    answer_codecs(offered, first)
}

/// Whether `number` (a bare user or a SIP URI's user part) is the echo's.
pub fn is_echo_number(configured: &str, to: &str) -> bool {
    let user = to
        .strip_prefix("sip:")
        .or_else(|| to.strip_prefix("sips:"))
        .map_or(to, |rest| rest.split(['@', ';']).next().unwrap_or(rest));
    user.eq_ignore_ascii_case(configured)
}

/// One running echo: dropping it stops it.
pub struct Echo {
    addr: SocketAddr,
    paused: Arc<AtomicBool>,
    returned: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Echo {
    /// Starts an echo on a loopback port.
    pub async fn start() -> std::io::Result<Echo> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = socket.local_addr()?;
        let paused = Arc::new(AtomicBool::new(false));
        let returned = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(reflect(socket, paused.clone(), returned.clone()));
        Ok(Echo {
            addr,
            paused,
            returned,
            task,
        })
    }

    /// Where the call's SIP leg sends its media.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// On hold the echo stays silent (like a far end sending nothing).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// RTP packets sent back so far.
    pub fn returned(&self) -> u64 {
        self.returned.load(Ordering::Relaxed)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// RTCP packet types 200–204 sit where RTP's marker and payload type are (RFC 5761).
fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && (200..=204).contains(&datagram[1])
}

async fn reflect(socket: UdpSocket, paused: Arc<AtomicBool>, returned: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if n < 12 || buf[0] >> 6 != 2 || is_rtcp(&buf[..n]) || paused.load(Ordering::Relaxed) {
            continue;
        }
        if socket.send_to(&buf[..n], from).await.is_ok() {
            returned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::CodecName;

    fn codec(pt: u8, name: CodecName, clock: u32, channels: u8) -> Codec {
        Codec {
            pt,
            name,
            clock_rate: clock,
            channels,
            fmtp: None,
        }
    }

    #[test]
    fn answers_the_first_audio_codec_with_its_telephone_event() {
        let offered = vec![
            codec(111, CodecName::Opus, 48000, 2),
            codec(0, CodecName::Pcmu, 8000, 1),
            codec(126, CodecName::TelephoneEvent, 8000, 1),
            codec(110, CodecName::TelephoneEvent, 48000, 1),
        ];
        let a = answer(&offered).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].pt, a[1].pt), (111, 110));
        assert!(
            answer(&offered[2..]).is_err(),
            "telephone-event alone is no call"
        );
    }

    #[test]
    fn echo_numbers() {
        assert!(is_echo_number("echo", "echo"));
        assert!(is_echo_number("echo", "ECHO"));
        assert!(is_echo_number("echo", "sip:echo@gw.example;transport=tcp"));
        assert!(!is_echo_number("echo", "echo2"));
        assert!(!is_echo_number("echo", "sip:1001@gw.example"));
    }

    #[tokio::test]
    async fn returns_rtp_but_not_rtcp_and_not_on_hold() {
        let echo = Echo::start().await.unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rtp = [0x80, 111, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xaa, 0xbb];
        let rtcp = [0x81, 200, 0, 6, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        peer.send_to(&rtcp, echo.addr()).await.unwrap();
        peer.send_to(&rtp, echo.addr()).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(2), peer.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(
            &buf[..n],
            &rtp,
            "the RTP comes back, the RTCP before it did not"
        );
        echo.set_paused(true);
        peer.send_to(&rtp, echo.addr()).await.unwrap();
        let silent = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            peer.recv_from(&mut buf),
        )
        .await;
        assert!(silent.is_err(), "nothing comes back on hold");
        assert_eq!(echo.returned(), 1);
    }
}
