//! Device class and operating system from a `User-Agent`: a hand-ordered
//! byte matcher.
//!
//! Almost every browser agent is `Mozilla/5.0 (<platform>; …`, and the
//! platform token alone tells the OS (and, but for Android, the device).
//! So the matcher looks at the bytes after the first `(` against the
//! platforms in order of how common they are, and only for the rest
//! searches the (bounded) string for a few tokens. `benches/agent.rs`
//! measures it against the `woothee` crate: see BENCHMARKS.md.
//!
//! Only the first [`MAX_AGENT_BYTES`] bytes are looked at, so a giant agent
//! costs no more than a normal one; bytes need not be UTF-8.

use memchr::memmem;
use serde::{Deserialize, Serialize};

/// Bytes of a user agent the matcher looks at.
pub const MAX_AGENT_BYTES: usize = 512;

/// A device class, as the contract names it. Codes are the click log's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Device {
    Desktop = 1,
    Mobile = 2,
    Tablet = 3,
}

/// An operating system family, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Os {
    Ios = 1,
    Android = 2,
    Windows = 3,
    Macos = 4,
    Linux = 5,
    Other = 6,
}

impl Device {
    pub const ALL: [Device; 3] = [Device::Mobile, Device::Tablet, Device::Desktop];

    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
        }
    }

    pub fn from_code(code: u8) -> Option<Device> {
        Device::ALL.into_iter().find(|d| *d as u8 == code)
    }

    pub fn parse(s: &str) -> Option<Device> {
        Device::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl Os {
    pub const ALL: [Os; 6] = [
        Os::Ios,
        Os::Android,
        Os::Windows,
        Os::Macos,
        Os::Linux,
        Os::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Os::Ios => "ios",
            Os::Android => "android",
            Os::Windows => "windows",
            Os::Macos => "macos",
            Os::Linux => "linux",
            Os::Other => "other",
        }
    }

    pub fn from_code(code: u8) -> Option<Os> {
        Os::ALL.into_iter().find(|o| *o as u8 == code)
    }

    pub fn parse(s: &str) -> Option<Os> {
        Os::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What a user agent says about the client; `None`s for an empty agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agent {
    pub device: Option<Device>,
    pub os: Option<Os>,
}

impl Agent {
    /// The click log's device byte (0 = unknown).
    pub fn device_code(&self) -> u8 {
        self.device.map_or(0, |d| d as u8)
    }

    /// The click log's OS byte (0 = unknown).
    pub fn os_code(&self) -> u8 {
        self.os.map_or(0, |o| o as u8)
    }
}

/// Classifies a user agent (see the module doc).
pub fn parse(user_agent: &[u8]) -> Agent {
    let ua = &user_agent[..user_agent.len().min(MAX_AGENT_BYTES)];
    if ua.iter().all(u8::is_ascii_whitespace) {
        return Agent::default();
    }
    let agent = |device, os| Agent {
        device: Some(device),
        os: Some(os),
    };
    // The platform token: what follows the first `(`.
    if let Some(open) = memchr::memchr(b'(', ua) {
        let p = &ua[open + 1..];
        if p.starts_with(b"Windows NT") {
            return agent(Device::Desktop, Os::Windows);
        }
        if p.starts_with(b"iPhone") || p.starts_with(b"iPod") {
            return agent(Device::Mobile, Os::Ios);
        }
        if p.starts_with(b"iPad") {
            return agent(Device::Tablet, Os::Ios);
        }
        if p.starts_with(b"Linux; Android") || p.starts_with(b"Android") {
            return android(ua);
        }
        if p.starts_with(b"Macintosh") {
            return agent(Device::Desktop, Os::Macos);
        }
        if p.starts_with(b"X11; Linux") || p.starts_with(b"X11; Ubuntu") {
            return agent(Device::Desktop, Os::Linux);
        }
    }
    // Apps, bots and the rest: look for the tokens, most telling first.
    let has = |needle: &[u8]| memmem::find(ua, needle).is_some();
    if has(b"Windows Phone") {
        return agent(Device::Mobile, Os::Other);
    }
    if has(b"Android") {
        return android(ua);
    }
    if has(b"iPad") {
        return agent(Device::Tablet, Os::Ios);
    }
    if has(b"iPhone") || has(b"iPod") || has(b"iOS") {
        return agent(Device::Mobile, Os::Ios);
    }
    if has(b"Windows") {
        return agent(Device::Desktop, Os::Windows);
    }
    if has(b"Mac OS X") || has(b"Macintosh") {
        return agent(Device::Desktop, Os::Macos);
    }
    let device = if has(b"Tablet") {
        Device::Tablet
    } else if has(b"Mobi") {
        Device::Mobile
    } else {
        Device::Desktop
    };
    if has(b"CrOS") {
        return agent(device, Os::Other);
    }
    if has(b"Linux") {
        return agent(device, Os::Linux);
    }
    agent(device, Os::Other)
}

/// Android phones say `Mobile`; Android tablets do not.
fn android(ua: &[u8]) -> Agent {
    let device = if memmem::find(ua, b"Mobile").is_some() {
        Device::Mobile
    } else {
        Device::Tablet
    };
    Agent {
        device: Some(device),
        os: Some(Os::Android),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(ua: &str, device: Device, os: Os) {
        let got = parse(ua.as_bytes());
        assert_eq!(
            got,
            Agent {
                device: Some(device),
                os: Some(os)
            },
            "{ua}"
        );
    }

    #[test]
    fn common_browsers_are_classified() {
        use Device::*;
        check("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", Desktop, Os::Windows);
        check("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1", Mobile, Os::Ios);
        check("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1", Tablet, Os::Ios);
        check("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36", Mobile, Os::Android);
        check("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Tablet, Os::Android);
        check("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15", Desktop, Os::Macos);
        check(
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            Desktop,
            Os::Linux,
        );
        check("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop, Os::Other);
        check("Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063", Mobile, Os::Other);
        check(
            "Instagram 300.0.0.0 (iPhone14,2; iOS 17_0; en_US)",
            Mobile,
            Os::Ios,
        );
        check("curl/8.5.0", Desktop, Os::Other);
        check(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            Desktop,
            Os::Other,
        );
    }

    #[test]
    fn an_empty_agent_says_nothing() {
        assert_eq!(parse(b""), Agent::default());
        assert_eq!(parse(b"   "), Agent::default());
        assert_eq!(Agent::default().device_code(), 0);
    }

    #[test]
    fn codes_and_names_round_trip() {
        for d in Device::ALL {
            assert_eq!(Device::from_code(d as u8), Some(d));
            assert_eq!(Device::parse(d.as_str()), Some(d));
        }
        for o in Os::ALL {
            assert_eq!(Os::from_code(o as u8), Some(o));
            assert_eq!(Os::parse(o.as_str()), Some(o));
        }
        assert_eq!(Device::from_code(0), None);
        assert_eq!(Os::parse("beos"), None);
    }

    #[test]
    fn a_giant_agent_is_read_only_up_to_the_bound() {
        let mut ua = vec![b'x'; 1 << 20];
        ua.extend_from_slice(b" iPhone");
        // The token past the bound is not seen: bounded work, no panic.
        assert_eq!(parse(&ua).os, Some(Os::Other));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(ua in proptest::collection::vec(any::<u8>(), 0..700)) {
            let a = parse(&ua);
            prop_assert_eq!(a.device.is_some(), a.os.is_some());
        }
    }
}
