//! Reading a request body on either listener: a size cap, a deadline for
//! the whole body and a minimum rate, so a client that sends a
//! `Content-Length` and then trickles (or never sends) the bytes cannot
//! hold a request in flight for longer than the deadline.
//!
//! The rate is checked after a grace second: from then on the bytes
//! received must keep up with `min_bytes_per_sec` times the time spent
//! past the grace. A body that is cut short, too slow or late is an error
//! naming which; the caller answers it and nothing of the body is used.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tokio::time::Instant;

/// Time a body gets before its rate is checked at all.
pub const RATE_GRACE: Duration = Duration::from_secs(1);
/// How often the rate is checked once the grace is over.
const RATE_CHECK: Duration = Duration::from_millis(250);

/// What a body read may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// The whole body must have arrived within this.
    pub timeout: Duration,
    /// After [`RATE_GRACE`], at least this many bytes per second on
    /// average (0: no rate check, the deadline alone).
    pub min_bytes_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    #[error("not received within {0} ms")]
    TimedOut(u128),
    #[error("arriving slower than {0} bytes/s")]
    TooSlow(u64),
    #[error("unreadable: {0}")]
    Unreadable(String),
}

impl BodyError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "too_large",
            BodyError::TimedOut(_) => "timeout",
            BodyError::TooSlow(_) => "too_slow",
            BodyError::Unreadable(_) => "unreadable",
        }
    }

    /// The client was too slow (deadline or rate), as opposed to sending
    /// too much or garbage.
    pub fn is_slow(&self) -> bool {
        matches!(self, BodyError::TimedOut(_) | BodyError::TooSlow(_))
    }
}

/// Reads `body` whole within `limits`.
pub async fn read<B>(body: B, limits: BodyLimits) -> Result<Bytes, BodyError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = limits.max_bytes;
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge(max));
    }
    let started = Instant::now();
    let deadline = tokio::time::sleep_until(started + limits.timeout);
    let mut deadline = std::pin::pin!(deadline);
    let mut check = tokio::time::interval_at(started + RATE_GRACE, RATE_CHECK);
    let mut body = std::pin::pin!(body);
    // Most bodies come in one frame: keep it without a copy.
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut received = 0usize;
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                None => break,
                Some(Err(e)) => return Err(BodyError::Unreadable(e.into().to_string())),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    received += data.len();
                    if received > max {
                        return Err(BodyError::TooLarge(max));
                    }
                    match &first {
                        None if rest.is_empty() => first = Some(data),
                        _ => {
                            if let Some(f) = first.take() {
                                rest.extend_from_slice(&f);
                            }
                            rest.extend_from_slice(&data);
                        }
                    }
                }
            },
            _ = &mut deadline => return Err(BodyError::TimedOut(limits.timeout.as_millis())),
            _ = check.tick(), if limits.min_bytes_per_sec > 0 => {
                let past_grace = started.elapsed().saturating_sub(RATE_GRACE).as_secs_f64();
                if (received as f64) < limits.min_bytes_per_sec as f64 * past_grace {
                    return Err(BodyError::TooSlow(limits.min_bytes_per_sec));
                }
            }
        }
    }
    Ok(match first {
        Some(f) => f,
        None => rest.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Frame;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    const LIMITS: BodyLimits = BodyLimits {
        max_bytes: 1024,
        timeout: Duration::from_secs(3),
        min_bytes_per_sec: 100,
    };

    /// A body that sends its chunks with `gap` before each, then ends;
    /// with no chunks and `forever`, it never sends anything.
    struct Trickle {
        chunks: std::collections::VecDeque<&'static [u8]>,
        gap: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        forever: bool,
    }

    fn trickle(chunks: Vec<&'static [u8]>, gap: Duration) -> Trickle {
        Trickle {
            chunks: chunks.into(),
            gap,
            sleep: None,
            forever: false,
        }
    }

    impl HttpBody for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.forever {
                return Poll::Pending;
            }
            if self.chunks.is_empty() {
                return Poll::Ready(None);
            }
            let gap = self.gap;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            let next = self.chunks.pop_front().expect("checked non-empty");
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(next)))))
        }
    }

    #[tokio::test]
    async fn a_whole_body_is_returned_as_sent() {
        let b = read(Full::new(Bytes::from_static(b"hello")), LIMITS).await;
        assert_eq!(b.unwrap(), Bytes::from_static(b"hello"));
        let parts = trickle(vec![b"ab", b"cd", b"ef"], Duration::from_millis(1));
        assert_eq!(
            read(parts, LIMITS).await.unwrap(),
            Bytes::from_static(b"abcdef")
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_by_its_length_or_its_bytes() {
        let big = Full::new(Bytes::from(vec![b'x'; 2000]));
        assert_eq!(read(big, LIMITS).await, Err(BodyError::TooLarge(1024)));
        let parts = trickle(vec![&[b'x'; 600], &[b'x'; 600]], Duration::ZERO);
        assert_eq!(read(parts, LIMITS).await, Err(BodyError::TooLarge(1024)));
    }

    #[tokio::test]
    async fn a_body_that_never_arrives_ends_at_the_deadline() {
        let mut never = trickle(vec![], Duration::ZERO);
        never.forever = true;
        let limits = BodyLimits {
            timeout: Duration::from_millis(200),
            min_bytes_per_sec: 0,
            ..LIMITS
        };
        assert_eq!(read(never, limits).await, Err(BodyError::TimedOut(200)));
    }

    #[tokio::test]
    async fn a_trickling_body_is_cut_once_it_falls_below_the_minimum_rate() {
        let slow = trickle(vec![b"x"; 100], Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(read(slow, LIMITS).await, Err(BodyError::TooSlow(100)));
        assert!(started.elapsed() < LIMITS.timeout, "before the deadline");
    }
}
