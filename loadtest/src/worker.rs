//! One connection's loop. Closed-loop sends the next request as soon as the
//! last answer is in; open-loop sends on a fixed schedule and measures
//! latency from the *scheduled* time, so a stalled server is charged for
//! every request it delayed (no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::{self, Extras, Head, WireError};
use crate::traffic::Traffic;

/// Answers slower than this count as errors (and free the connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failed connect, so a dead server does
/// not turn the generator into a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// How early the coarse timer wakes an open-loop sender (see `wait_until`).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Settings shared by every worker.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub host: String,
    pub traffic: Traffic,
    pub new_conn: bool,
    /// Seconds between this worker's requests in open-loop mode.
    pub interval: Option<Duration>,
    pub start: Instant,
    /// Results before this instant are not recorded.
    pub record_from: Instant,
    pub stop_at: Instant,
    /// Every n-th answer gets its headers checked (0 = none).
    pub check_every: u64,
    pub cookie_name: String,
    pub keep_click_ids: bool,
}

/// What one worker saw.
#[derive(Debug)]
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub errors: Errors,
    /// Requests re-sent once on a fresh connection after a kept-alive one
    /// turned out closed (each may have been seen twice by the server).
    pub retried: u64,
    pub click_ids: Vec<String>,
    /// The slowest answer (µs) of the requests scheduled in each second of
    /// the measured window: when a stall happened, not only that it did.
    pub worst_us_per_second: Vec<u64>,
}

/// Failures by kind; every answer that is not a redirect is one of these.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Errors {
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    pub status: u64,
    pub check: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.timeout + self.status + self.check
    }

    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.timeout += o.timeout;
        self.status += o.status;
        self.check += o.check;
    }
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: Errors::default(),
            retried: 0,
            click_ids: Vec::new(),
            worst_us_per_second: Vec::new(),
        }
    }

    fn note_worst(&mut self, second: usize, us: u64) {
        if self.worst_us_per_second.len() <= second {
            self.worst_us_per_second.resize(second + 1, 0);
        }
        let worst = &mut self.worst_us_per_second[second];
        *worst = (*worst).max(us);
    }

    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, t: Tally) {
        self.latency_us.add(&t.latency_us).expect("same bounds");
        self.ok += t.ok;
        self.errors.add(&t.errors);
        self.retried += t.retried;
        self.click_ids.extend(t.click_ids);
        for (second, us) in t.worst_us_per_second.into_iter().enumerate() {
            self.note_worst(second, us);
        }
    }
}

enum Outcome {
    Ok(Head),
    /// Answered, but only after a retry on a fresh connection.
    Retried(Head),
    Connect,
    Io,
    Timeout,
}

/// Runs worker `index` of `workers` until the plan's stop time.
pub async fn run(plan: Arc<Plan>, index: usize, workers: usize) -> Tally {
    let mut tally = Tally::new();
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut request = Vec::with_capacity(512);
    let mut buf = Vec::with_capacity(8192);
    let mut conn: Option<TcpStream> = None;
    let mut answered: u64 = 0;
    // Spread open-loop workers evenly over one interval.
    let mut next_send = plan
        .interval
        .map(|iv| plan.start + iv.mul_f64(index as f64 / workers as f64));

    loop {
        let sent_at = match next_send {
            Some(at) => {
                if at >= plan.stop_at {
                    break;
                }
                wait_until(at).await;
                at
            }
            None => Instant::now(),
        };
        if sent_at >= plan.stop_at {
            break;
        }
        let check = plan.check_every > 0 && answered.is_multiple_of(plan.check_every);
        let want_headers = check || plan.keep_click_ids;
        let extras = plan.traffic.pick(&mut rng);
        http::write_request(
            &mut request,
            &plan.host,
            extras.code,
            Extras {
                close: plan.new_conn,
                ..extras.extras
            },
        );
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            one_request(&plan, &mut conn, &request, &mut buf, want_headers),
        )
        .await
        .unwrap_or(Outcome::Timeout);
        let done = Instant::now();
        if let Some(iv) = plan.interval {
            next_send = Some(sent_at + iv);
        }
        let recording = sent_at >= plan.record_from;
        answered += 1;
        if recording {
            // Every attempt, failed ones included: a stall or a 503 must
            // show in the percentiles, not vanish from them.
            let us = done.duration_since(sent_at).as_micros() as u64;
            tally.latency_us.saturating_record(us.max(1));
            let second = sent_at.duration_since(plan.record_from).as_secs() as usize;
            tally.note_worst(second, us);
        }
        let outcome = match outcome {
            Outcome::Retried(head) => {
                if recording {
                    tally.retried += 1;
                }
                Outcome::Ok(head)
            }
            other => other,
        };
        match outcome {
            Outcome::Ok(head) => {
                let redirect = (300..400).contains(&head.status);
                if head.close || plan.new_conn {
                    conn = None;
                }
                // Every click id, warm-up included: a check that all
                // answered clicks were stored needs all of them.
                if redirect && plan.keep_click_ids {
                    if let Some(id) = click_id(&head, &plan.cookie_name) {
                        tally.click_ids.push(id.to_owned());
                    }
                }
                if !recording {
                    continue;
                }
                if !redirect {
                    tally.errors.status += 1;
                } else if check && !head_is_valid(&head, &plan.cookie_name) {
                    tally.errors.check += 1;
                } else {
                    tally.ok += 1;
                }
            }
            failure => {
                conn = None;
                if recording {
                    match failure {
                        Outcome::Connect => tally.errors.connect += 1,
                        Outcome::Timeout => tally.errors.timeout += 1,
                        _ => tally.errors.io += 1,
                    }
                }
                if matches!(failure, Outcome::Connect) && plan.interval.is_none() {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    }
    tally
}

/// Sleeps until `at` with sub-millisecond accuracy: tokio's timer wheel
/// ticks in whole milliseconds, which would add up to 1 ms of the
/// generator's own lag to every open-loop latency. The last stretch is
/// spent yielding instead.
async fn wait_until(at: Instant) {
    if let Some(early) = at.checked_sub(TIMER_SLACK) {
        if early > Instant::now() {
            tokio::time::sleep_until(early).await;
        }
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

async fn one_request(
    plan: &Plan,
    conn: &mut Option<TcpStream>,
    request: &[u8],
    buf: &mut Vec<u8>,
    want_headers: bool,
) -> Outcome {
    let fresh = conn.is_none();
    if fresh {
        match TcpStream::connect(plan.addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                *conn = Some(s);
            }
            Err(_) => return Outcome::Connect,
        }
    }
    let stream = conn.as_mut().expect("connected above");
    match http::exchange(stream, request, buf, want_headers).await {
        Ok(head) => Outcome::Ok(head),
        // A kept-alive connection the server closed while idle: retry once
        // on a fresh one, as every HTTP client does.
        Err(WireError::Eof | WireError::Io(_)) if !fresh => {
            *conn = None;
            match Box::pin(one_request(plan, conn, request, buf, want_headers)).await {
                Outcome::Ok(head) => Outcome::Retried(head),
                other => other,
            }
        }
        Err(_) => Outcome::Io,
    }
}

/// A sampled answer must be a redirect with a destination, the attribution
/// cookie and `Cache-Control: private, no-store`.
fn head_is_valid(head: &Head, cookie_name: &str) -> bool {
    let location_ok = head
        .location
        .as_deref()
        .is_some_and(|l| l.starts_with("http://") || l.starts_with("https://"));
    let cookie_ok = click_id(head, cookie_name).is_some_and(|id| !id.is_empty());
    let cache_ok = head
        .cache_control
        .as_deref()
        .is_some_and(|c| c.contains("no-store"));
    location_ok && cookie_ok && cache_ok
}

/// The cookie value of `name=value; …`.
fn click_id<'h>(head: &'h Head, cookie_name: &str) -> Option<&'h str> {
    let cookie = head.set_cookie.as_deref()?;
    let value = cookie.strip_prefix(cookie_name)?.strip_prefix('=')?;
    Some(value.split(';').next().unwrap_or(value))
}

/// Picks a random element (used by the traffic model).
pub fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(loc: Option<&str>, cookie: Option<&str>, cc: Option<&str>) -> Head {
        Head {
            status: 302,
            location: loc.map(str::to_owned),
            set_cookie: cookie.map(str::to_owned),
            cache_control: cc.map(str::to_owned),
            close: false,
        }
    }

    #[test]
    fn a_sampled_redirect_needs_location_cookie_and_no_store() {
        let good = head(
            Some("https://d.example/"),
            Some("ce_click=01abc; Max-Age=60; Path=/"),
            Some("private, no-store"),
        );
        assert!(head_is_valid(&good, "ce_click"));
        assert_eq!(click_id(&good, "ce_click"), Some("01abc"));
        assert!(!head_is_valid(&good, "other"));
        let no_loc = head(None, good.set_cookie.as_deref(), Some("no-store"));
        assert!(!head_is_valid(&no_loc, "ce_click"));
        let cached = head(Some("https://d/"), good.set_cookie.as_deref(), None);
        assert!(!head_is_valid(&cached, "ce_click"));
        let relative = head(Some("/x"), good.set_cookie.as_deref(), Some("no-store"));
        assert!(!head_is_valid(&relative, "ce_click"));
    }
}
