//! What a refused request left unread is read (and thrown away) before the
//! refusal goes out.
//!
//! A handler or middleware that refuses a request before reading its body
//! (an origin not in `domain-whitelist`, a body over `max-body-bytes`, a
//! wrong secret) would otherwise answer while the client is still sending:
//! over HTTP/1.1 the connection is closed under the client, which often
//! sees a reset instead of the answer; over HTTP/2 the stream is reset,
//! which curl and browsers report as a framing error. So every request's
//! body is handed to the router wrapped: if the router drops it unfinished,
//! the rest comes back here and is drained — at most [`DRAIN_CAP_BYTES`],
//! for at most [`DRAIN_TIMEOUT`] — before the response is sent. A client
//! sending more than that still loses the connection, as it would with
//! nginx's lingering close.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// Most of a refused request's body read before answering.
pub const DRAIN_CAP_BYTES: usize = 1024 * 1024;
/// Longest spent reading it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type Slot<B> = Arc<Mutex<Option<B>>>;

/// A request body that gives back what was not read when it is dropped.
pub struct Reclaimable<B> {
    inner: Option<B>,
    slot: Slot<B>,
}

/// Where a [`Reclaimable`] body leaves what it did not give out.
pub struct Leftover<B> {
    slot: Slot<B>,
}

/// Wraps `body`; the [`Leftover`] holds whatever the wrapper is dropped with.
pub fn wrap<B>(body: B) -> (Reclaimable<B>, Leftover<B>) {
    let slot = Arc::new(Mutex::new(None));
    (
        Reclaimable {
            inner: Some(body),
            slot: slot.clone(),
        },
        Leftover { slot },
    )
}

impl<B> Body for Reclaimable<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Nothing more will come: nothing to give back.
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for Reclaimable<B> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

impl<B> Leftover<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Reads what the router left of the body, up to the cap and the
    /// timeout; true when it was all read (or nothing was left).
    pub async fn drain(self) -> bool {
        let rest = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut rest) = rest else {
            return true;
        };
        if rest.is_end_stream() {
            return true;
        }
        let read_all = async {
            let mut read = 0usize;
            while let Some(frame) = rest.frame().await {
                let Ok(frame) = frame else { return false };
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                    if read > DRAIN_CAP_BYTES {
                        return false;
                    }
                }
            }
            true
        };
        tokio::time::timeout(DRAIN_TIMEOUT, read_all)
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn a_body_dropped_unread_is_drained_and_a_read_one_leaves_nothing() {
        let (body, leftover) = wrap(Full::new(Bytes::from_static(b"unread")));
        drop(body);
        assert!(leftover.slot.lock().unwrap().is_some());
        assert!(leftover.drain().await);

        let (body, leftover) = wrap(Full::new(Bytes::from_static(b"read")));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"read");
        assert!(leftover.slot.lock().unwrap().is_none());
        assert!(leftover.drain().await);
    }

    /// A body of `left` 4 KiB frames.
    struct Chunks {
        left: usize,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; 4096])))))
        }
    }

    #[tokio::test]
    async fn draining_stops_at_the_cap() {
        let (body, leftover) = wrap(Chunks {
            left: DRAIN_CAP_BYTES / 4096 - 1,
        });
        drop(body);
        assert!(leftover.drain().await, "under the cap: all read");
        let (body, leftover) = wrap(Chunks {
            left: DRAIN_CAP_BYTES / 4096 + 2,
        });
        drop(body);
        assert!(!leftover.drain().await, "over the cap: given up");
    }
}
