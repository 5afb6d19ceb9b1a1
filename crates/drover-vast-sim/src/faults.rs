//! The simulator's switchable faults, and the `--faults SPEC` syntax.
//!
//! A spec is a comma-separated list of `name` or `name=value`; `none` or an empty spec means
//! no fault. Counted faults fire on the next N matching requests (N = 1 when no value is
//! given) and then stop; the others stay on until changed.
//!
//! | Spec | Effect |
//! |---|---|
//! | `rate_limit=N` | the next N API requests get 429 with no `Retry-After`, cycling through the three documented bodies (plain text, `{"detail":...}`, `{"error":"rate_limit_exceeded"}`) |
//! | `bad_gateway=N` | the next N requests get 502 before anything is done |
//! | `unavailable=N` | the next N requests get 503 before anything is done |
//! | `gateway_timeout=N` | the next N requests are carried out, then answered 504 (the work is done; the client cannot know) |
//! | `create_gateway_timeout=N` | the same, for the next N creates only: the instance exists, the answer is a 504 |
//! | `auth=401` or `auth=404` | every API request fails with `auth_error` at that status, as for a revoked key |
//! | `offer_gone=N` | the next N creates find their offer sold to someone else between search and create: 404 `no_such_ask` (code 3603) and 410 `no_such_ask`, alternately |
//! | `double_sale` | sold offers stay listed as rentable; buying one again succeeds and names a contract, but that instance never starts (it goes `offline`) and bills storage |
//! | `low_bid=N` | for the next N interruptible creates the offer's `min_bid` has risen above the bid: the answer is an error that still carries `new_contract`, and the instance exists, stopped, billing storage |
//! | `stuck_loading=N` | the next N instances never leave `loading` |
//! | `exited=N`, `offline=N` | the next N instances end `exited` / `offline` instead of `running` |
//! | `null_first_read=N` | the first read of each of the next N new instances answers `{"instances": null}` |
//! | `price_increase=F` | every instance that reaches `running` gets a pending host price increase by factor F, effective after the notice (`price_notice`, default 30 simulated seconds) unless rejected (rejecting stops the instance); unanswered, it takes effect |
//! | `price_notice=S` | the notice of those increases, in simulated seconds (any length, 0 included) |
//! | `underquote=F` | every new instance runs (and bills compute) at F times the price its offer was quoted at |
//! | `late_create=N` | the next N creates answer 504 at once and are applied upstream `late_create_s` (default 20) simulated seconds later |
//! | `create_bad_gateway=N` | the next N creates answer 502 and nothing is created |
//! | `echo_key=ENC` | every create is refused 400 with a message that echoes the presented API key encoded as ENC: `plain`, `base64`, `base64url`, `hex` or `url` |
//! | `destroy_noop=N` | the next N destroys answer success and do nothing |
//! | `slow=MS` | every API response is delayed by MS milliseconds, after the work is done |
//! | `slow_create=MS` | only creates are delayed so |
//! | `bill_lag=S` | the charges listing counts each instance only up to S simulated seconds ago (its `end` says so; the amount is the whole bill's share of that time), as a provider that bills late |
//!
//! ```
//! use drover_vast_sim::Faults;
//!
//! let f: Faults = "rate_limit=2,auth=404,double_sale,slow=150".parse().unwrap();
//! assert_eq!(f.rate_limit, 2);
//! assert_eq!(f.auth, Some(404));
//! assert!(f.double_sale);
//! assert_eq!(f.slow_ms, 150);
//! assert!("teleport=1".parse::<Faults>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

/// The faults switched on in a simulator. See the module docs for each one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// 429s left to send.
    pub rate_limit: u32,
    /// 502s left to send.
    pub bad_gateway: u32,
    /// 503s left to send.
    pub unavailable: u32,
    /// 504s-after-the-work left to send.
    pub gateway_timeout: u32,
    /// 504s-after-the-work left to send to creates.
    pub create_gateway_timeout: u32,
    /// Every request fails authentication with this status (401 or 404).
    pub auth: Option<u16>,
    /// Creates left whose offer vanishes.
    pub offer_gone: u32,
    /// Sold offers can be sold again, to an instance that never starts.
    pub double_sale: bool,
    /// Interruptible creates left that find their bid too low.
    pub low_bid: u32,
    /// New instances left that stay in `loading`.
    pub stuck_loading: u32,
    /// New instances left that end `exited`.
    pub exited: u32,
    /// New instances left that end `offline`.
    pub offline: u32,
    /// New instances left whose first read is `{"instances": null}`.
    pub null_first_read: u32,
    /// Factor of the host price increase every running instance gets.
    pub price_increase: Option<f64>,
    /// Destroys left that do nothing.
    pub destroy_noop: u32,
    /// Delay of every API response, in milliseconds.
    pub slow_ms: u64,
    /// Delay of every create response, in milliseconds.
    pub slow_create_ms: u64,
    /// Notice of host price increases, simulated seconds; `None`: the timing's default.
    pub price_notice_s: Option<f64>,
    /// Factor between an instance's running price and its offer's quote.
    pub underquote: Option<f64>,
    /// Creates left that answer 504 and are applied later.
    pub late_create: u32,
    /// Creates left that answer 502 with nothing created.
    pub create_bad_gateway: u32,
    /// Creates are refused with the key echoed in this encoding.
    pub echo_key: Option<KeyEcho>,
    /// How far the charges listing lags, simulated seconds.
    pub bill_lag_s: Option<f64>,
}

/// How the `echo_key` fault encodes the key it echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEcho {
    /// As presented.
    Plain,
    /// Standard base64, padded.
    Base64,
    /// URL-safe base64, unpadded.
    Base64Url,
    /// Lower-case hex.
    Hex,
    /// Percent-encoded.
    Url,
}

impl KeyEcho {
    const NAMES: [(&'static str, KeyEcho); 5] = [
        ("plain", KeyEcho::Plain),
        ("base64", KeyEcho::Base64),
        ("base64url", KeyEcho::Base64Url),
        ("hex", KeyEcho::Hex),
        ("url", KeyEcho::Url),
    ];

    fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, e)| *e == self).map_or("plain", |(n, _)| n)
    }

    /// `key` in this encoding.
    pub fn encode(self, key: &str) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        match self {
            KeyEcho::Plain => key.to_owned(),
            KeyEcho::Base64 => STANDARD.encode(key),
            KeyEcho::Base64Url => URL_SAFE_NO_PAD.encode(key),
            KeyEcho::Hex => hex::encode(key),
            KeyEcho::Url => {
                percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            }
        }
    }
}

/// A spec that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault spec: {0}")]
pub struct FaultSpecError(String);

impl FromStr for Faults {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut f = Faults::default();
        let spec = spec.trim();
        if spec.is_empty() || spec == "none" {
            return Ok(f);
        }
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let count = || -> Result<u32, FaultSpecError> {
                value.map_or(Ok(1), |v| {
                    v.parse().map_err(|_| FaultSpecError(format!("`{name}` takes a count")))
                })
            };
            let millis = || -> Result<u64, FaultSpecError> {
                value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                    FaultSpecError(format!("`{name}` takes a delay in milliseconds"))
                })
            };
            match name {
                "rate_limit" => f.rate_limit = count()?,
                "bad_gateway" => f.bad_gateway = count()?,
                "unavailable" => f.unavailable = count()?,
                "gateway_timeout" => f.gateway_timeout = count()?,
                "create_gateway_timeout" => f.create_gateway_timeout = count()?,
                "auth" => {
                    f.auth = match value {
                        Some("401") => Some(401),
                        Some("404") => Some(404),
                        _ => return Err(FaultSpecError("`auth` takes 401 or 404".into())),
                    }
                }
                "offer_gone" => f.offer_gone = count()?,
                "double_sale" => f.double_sale = true,
                "low_bid" => f.low_bid = count()?,
                "stuck_loading" => f.stuck_loading = count()?,
                "exited" => f.exited = count()?,
                "offline" => f.offline = count()?,
                "null_first_read" => f.null_first_read = count()?,
                "price_increase" => {
                    let factor: f64 = value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                        FaultSpecError("`price_increase` takes a factor such as 1.5".into())
                    })?;
                    if !(factor.is_finite() && factor > 0.0 && factor <= 100.0) {
                        return Err(FaultSpecError("`price_increase` must be in (0, 100]".into()));
                    }
                    f.price_increase = Some(factor);
                }
                "destroy_noop" => f.destroy_noop = count()?,
                "late_create" => f.late_create = count()?,
                "create_bad_gateway" => f.create_bad_gateway = count()?,
                "price_notice" => {
                    let s: f64 = value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                        FaultSpecError("`price_notice` takes simulated seconds".into())
                    })?;
                    if !(s.is_finite() && (0.0..=86_400.0).contains(&s)) {
                        return Err(FaultSpecError("`price_notice` must be in [0, 86400]".into()));
                    }
                    f.price_notice_s = Some(s);
                }
                "underquote" => {
                    let factor: f64 = value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                        FaultSpecError("`underquote` takes a factor such as 1.25".into())
                    })?;
                    if !(factor.is_finite() && factor > 0.0 && factor <= 100.0) {
                        return Err(FaultSpecError("`underquote` must be in (0, 100]".into()));
                    }
                    f.underquote = Some(factor);
                }
                "echo_key" => {
                    let wanted = value.unwrap_or("plain");
                    f.echo_key = Some(
                        KeyEcho::NAMES
                            .iter()
                            .find(|(n, _)| *n == wanted)
                            .map(|(_, e)| *e)
                            .ok_or_else(|| {
                                FaultSpecError(
                                    "`echo_key` takes plain, base64, base64url, hex or url".into(),
                                )
                            })?,
                    );
                }
                "slow" => f.slow_ms = millis()?,
                "slow_create" => f.slow_create_ms = millis()?,
                "bill_lag" => {
                    let s: f64 = value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                        FaultSpecError("`bill_lag` takes simulated seconds".into())
                    })?;
                    if !(s.is_finite() && (0.0..=86_400.0).contains(&s)) {
                        return Err(FaultSpecError("`bill_lag` must be in [0, 86400]".into()));
                    }
                    f.bill_lag_s = Some(s);
                }
                other => {
                    return Err(FaultSpecError(format!(
                        "unknown fault `{}`",
                        other.escape_debug()
                    )));
                }
            }
        }
        Ok(f)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let counted = [
            ("rate_limit", self.rate_limit),
            ("bad_gateway", self.bad_gateway),
            ("unavailable", self.unavailable),
            ("gateway_timeout", self.gateway_timeout),
            ("create_gateway_timeout", self.create_gateway_timeout),
            ("offer_gone", self.offer_gone),
            ("low_bid", self.low_bid),
            ("stuck_loading", self.stuck_loading),
            ("exited", self.exited),
            ("offline", self.offline),
            ("null_first_read", self.null_first_read),
            ("destroy_noop", self.destroy_noop),
            ("late_create", self.late_create),
            ("create_bad_gateway", self.create_bad_gateway),
        ];
        parts.extend(counted.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")));
        if let Some(s) = self.auth {
            parts.push(format!("auth={s}"));
        }
        if self.double_sale {
            parts.push("double_sale".into());
        }
        if let Some(p) = self.price_increase {
            parts.push(format!("price_increase={p}"));
        }
        if let Some(s) = self.price_notice_s {
            parts.push(format!("price_notice={s}"));
        }
        if let Some(u) = self.underquote {
            parts.push(format!("underquote={u}"));
        }
        if let Some(e) = self.echo_key {
            parts.push(format!("echo_key={}", e.name()));
        }
        if self.slow_ms > 0 {
            parts.push(format!("slow={}", self.slow_ms));
        }
        if self.slow_create_ms > 0 {
            parts.push(format!("slow_create={}", self.slow_create_ms));
        }
        if let Some(s) = self.bill_lag_s {
            parts.push(format!("bill_lag={s}"));
        }
        if parts.is_empty() { f.write_str("none") } else { f.write_str(&parts.join(",")) }
    }
}

/// Takes one from a counted fault; true if it fired.
pub(crate) fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let spec = "rate_limit=3,gateway_timeout=1,offer_gone=2,stuck_loading=1,auth=401,double_sale,price_increase=1.5,slow=20,price_notice=0.5,underquote=1.25,late_create=2,create_bad_gateway=1,echo_key=base64url,bill_lag=30";
        let f: Faults = spec.parse().unwrap();
        let again: Faults = f.to_string().parse().unwrap();
        assert_eq!(f, again);
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
        assert_eq!(Faults::default().to_string(), "none");
        assert_eq!("exited".parse::<Faults>().unwrap().exited, 1);
    }

    #[test]
    fn bad_specs() {
        for bad in [
            "auth=500",
            "rate_limit=x",
            "slow",
            "price_increase=-1",
            "price_increase=nan",
            "x",
            "echo_key=rot13",
            "price_notice=-1",
            "underquote=0",
        ] {
            assert!(bad.parse::<Faults>().is_err(), "{bad}");
        }
    }
}
