//! Bot, preview and prefetch classification.
//!
//! The user-agent lists live in `config/bots.toml` (compiled in) and are
//! matched with one Aho-Corasick automaton per list. Classification runs on
//! the click-log writer thread, never on the redirect path; the cached
//! classifier also keeps each agent's device and OS ([`agent::parse`]), so
//! the writer reads an agent once for both.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Deserialize;

use crate::links::agent::{self, Agent};

const BOTS_TOML: &str = include_str!("../../config/bots.toml");

/// Why a click was classified as not human.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotReason {
    /// No User-Agent at all.
    NoUserAgent,
    /// A link-preview fetcher (chat apps, social networks).
    Preview,
    /// A crawler, monitor, script or headless browser.
    Crawler,
    /// A browser prefetch/prerender (`Sec-Purpose`/`Purpose` headers).
    Prefetch,
    /// A `HEAD` request.
    Head,
}

impl BotReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BotReason::NoUserAgent => "no_user_agent",
            BotReason::Preview => "preview",
            BotReason::Crawler => "crawler",
            BotReason::Prefetch => "prefetch",
            BotReason::Head => "head",
        }
    }
}

/// Request facts the classifier needs beyond the user agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    pub head: bool,
    pub prefetch: bool,
}

#[derive(Deserialize)]
struct Lists {
    preview: List,
    crawler: List,
    not_bot: List,
}

#[derive(Deserialize)]
struct List {
    patterns: Vec<String>,
}

pub struct BotClassifier {
    preview: AhoCorasick,
    crawler: AhoCorasick,
    not_bot: AhoCorasick,
}

impl Default for BotClassifier {
    fn default() -> Self {
        let lists: Lists = toml::from_str(BOTS_TOML).expect("config/bots.toml is valid");
        let build = |l: &List| {
            AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .build(&l.patterns)
                .expect("bot patterns compile")
        };
        BotClassifier {
            preview: build(&lists.preview),
            crawler: build(&lists.crawler),
            not_bot: build(&lists.not_bot),
        }
    }
}

impl BotClassifier {
    pub fn classify(&self, user_agent: &str, signals: Signals) -> Option<BotReason> {
        self.classify_user_agent(user_agent)
            .or_else(|| classify_signals(signals))
    }

    /// The verdict the user agent alone gives (the expensive part).
    fn classify_user_agent(&self, user_agent: &str) -> Option<BotReason> {
        let ua = user_agent.trim();
        if ua.is_empty() {
            return Some(BotReason::NoUserAgent);
        }
        if self.preview.is_match(ua) {
            return Some(BotReason::Preview);
        }
        if self.crawler.is_match(ua) && !self.not_bot.is_match(ua) {
            return Some(BotReason::Crawler);
        }
        None
    }
}

/// The verdict the request's signals give, for a browser-like agent.
fn classify_signals(signals: Signals) -> Option<BotReason> {
    if signals.prefetch {
        return Some(BotReason::Prefetch);
    }
    if signals.head {
        return Some(BotReason::Head);
    }
    None
}

/// A [`BotClassifier`] that remembers the verdicts of recent user agents.
/// Click traffic repeats a few thousand user agents, so most clicks cost a
/// hash lookup instead of an automaton scan of the whole string. Bounded:
/// the memory is dropped when full (a flood of unique agents only costs
/// the scans it would have cost anyway).
pub struct CachedClassifier {
    classifier: BotClassifier,
    /// The verdict and the agent's device and OS (parsed in the same
    /// visit, so each distinct agent is read once).
    verdicts: std::collections::HashMap<Box<str>, (Option<BotReason>, Agent)>,
    capacity: usize,
}

impl CachedClassifier {
    pub fn new(classifier: BotClassifier, capacity: usize) -> CachedClassifier {
        CachedClassifier {
            classifier,
            verdicts: std::collections::HashMap::with_capacity(capacity),
            capacity,
        }
    }

    pub fn classify(&mut self, user_agent: &str, signals: Signals) -> Option<BotReason> {
        self.classify_with_agent(user_agent, signals).0
    }

    /// The verdict, and the device and OS the agent names.
    pub fn classify_with_agent(
        &mut self,
        user_agent: &str,
        signals: Signals,
    ) -> (Option<BotReason>, Agent) {
        let (verdict, agent) = match self.verdicts.get(user_agent) {
            Some(v) => *v,
            None => {
                let v = (
                    self.classifier.classify_user_agent(user_agent),
                    agent::parse(user_agent.as_bytes()),
                );
                if self.verdicts.len() >= self.capacity {
                    self.verdicts.clear();
                }
                self.verdicts.insert(user_agent.into(), v);
                v
            }
        };
        (verdict.or_else(|| classify_signals(signals)), agent)
    }
}

/// Whether request headers mark a speculative load (prefetch/prerender).
pub fn is_prefetch(headers: &http::HeaderMap) -> bool {
    // Pre-parsed names: `get("…")` would parse the name on every click.
    use http::HeaderName;
    static NAMES: [HeaderName; 4] = [
        HeaderName::from_static("sec-purpose"),
        HeaderName::from_static("purpose"),
        HeaderName::from_static("x-purpose"),
        HeaderName::from_static("x-moz"),
    ];
    NAMES.iter().filter_map(|name| headers.get(name)).any(|v| {
        let v = v.as_bytes();
        contains_ignore_case(v, b"prefetch") || contains_ignore_case(v, b"preview")
    })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn classify(ua: &str) -> Option<BotReason> {
        BotClassifier::default().classify(ua, Signals::default())
    }

    #[test]
    fn browsers_are_human() {
        assert_eq!(classify(CHROME), None);
        assert_eq!(
            classify("Mozilla/5.0 (Linux; Android 12; CUBOT X50) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36"),
            None
        );
    }

    #[test]
    fn previews_crawlers_and_scripts_are_told_apart() {
        assert_eq!(
            classify("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
            Some(BotReason::Preview)
        );
        assert_eq!(
            classify("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
            Some(BotReason::Preview)
        );
        assert_eq!(
            classify("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
            Some(BotReason::Crawler)
        );
        assert_eq!(classify("curl/8.5.0"), Some(BotReason::Crawler));
        assert_eq!(classify(""), Some(BotReason::NoUserAgent));
    }

    #[test]
    fn prefetch_and_head_mark_browser_requests() {
        let c = BotClassifier::default();
        let prefetch = Signals {
            prefetch: true,
            head: false,
        };
        let head = Signals {
            prefetch: false,
            head: true,
        };
        assert_eq!(c.classify(CHROME, prefetch), Some(BotReason::Prefetch));
        assert_eq!(c.classify(CHROME, head), Some(BotReason::Head));
        let mut h = http::HeaderMap::new();
        h.insert("sec-purpose", "prefetch;prerender".parse().unwrap());
        assert!(is_prefetch(&h));
        assert!(!is_prefetch(&http::HeaderMap::new()));
    }

    #[test]
    fn the_cache_gives_the_same_verdicts_and_stays_bounded() {
        let plain = BotClassifier::default();
        let mut cached = CachedClassifier::new(BotClassifier::default(), 2);
        let prefetch = Signals {
            prefetch: true,
            head: false,
        };
        for _ in 0..3 {
            for ua in [CHROME, "curl/8.5.0", "Slackbot 1.0", "", CHROME] {
                for signals in [Signals::default(), prefetch] {
                    assert_eq!(
                        cached.classify(ua, signals),
                        plain.classify(ua, signals),
                        "{ua}"
                    );
                }
            }
        }
        assert!(cached.verdicts.len() <= 2);
    }
}
