//! What the generated requests look like: which codes, and (optionally) a
//! mix of user agents, referers and sub-ids like real click traffic.

use std::path::Path;

use anyhow::{bail, Context};
use rand::Rng;

use crate::http::Extras;
use crate::worker::pick;

/// A plain desktop browser, used when traffic is not "realistic".
const DEFAULT_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

/// User agents of the realistic mix: mostly browsers, some crawlers and
/// link-preview fetchers, as ad traffic has.
const USER_AGENTS: &[&str] = &[
    DEFAULT_UA,
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
];

const REFERERS: &[&str] = &[
    "https://www.google.com/",
    "https://t.co/",
    "https://www.facebook.com/",
    "https://news.example.org/article/42",
];

#[derive(Debug)]
pub struct Traffic {
    codes: Vec<String>,
    realistic: bool,
    subs: Vec<String>,
}

/// One request's variable parts.
pub struct Pick<'a> {
    pub code: &'a str,
    pub extras: Extras<'a>,
}

impl Traffic {
    /// Codes from `--code` values and/or a file with one code per line.
    pub fn load(
        codes: Vec<String>,
        file: Option<&Path>,
        realistic: bool,
    ) -> anyhow::Result<Traffic> {
        let mut all = codes;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading codes from {}", path.display()))?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        if all.is_empty() {
            bail!("no codes: give --code or --codes FILE");
        }
        if let Some(bad) = all
            .iter()
            .find(|c| !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            bail!("code {bad:?} is not [A-Za-z0-9-]");
        }
        let subs = (0..1000).map(|i| format!("s{i}")).collect();
        Ok(Traffic {
            codes: all,
            realistic,
            subs,
        })
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Pick<'_> {
        let code = pick(rng, &self.codes);
        if !self.realistic {
            return Pick {
                code,
                extras: Extras {
                    user_agent: DEFAULT_UA,
                    ..Extras::default()
                },
            };
        }
        Pick {
            code,
            extras: Extras {
                user_agent: USER_AGENTS[rng.random_range(0..USER_AGENTS.len())],
                referer: rng.random_bool(0.6).then(|| *pick(rng, REFERERS)),
                sub: rng.random_bool(0.5).then(|| pick(rng, &self.subs).as_str()),
                close: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_come_from_flags_and_files_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("loadtest-codes-{}", std::process::id()));
        std::fs::write(&dir, "a1\n\n b-2 \n").unwrap();
        let t = Traffic::load(vec!["x".into()], Some(&dir), false).unwrap();
        assert_eq!(t.codes, ["x", "a1", "b-2"]);
        std::fs::remove_file(&dir).unwrap();
        assert!(Traffic::load(vec![], None, false).is_err());
        assert!(Traffic::load(vec!["a b".into()], None, false).is_err());
    }
}
