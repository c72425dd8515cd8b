//! Settings of the emulated board, read from its semihosting command line.
//!
//! QEMU hands the guest a command line through the semihosting call
//! `SYS_GET_CMDLINE`, given with
//! `-semihosting-config enable=on,target=native,arg=ferry,arg=device=0a1b2c,arg=boot=7`.
//! Words without `=` (the program name) are skipped; the others are:
//!
//! | key          | value                                   | default                    |
//! |--------------|-----------------------------------------|----------------------------|
//! | `device`     | device id, 1–16 bytes as hex            | [`DEFAULT_DEVICE_ID`]      |
//! | `boot`       | boot number, decimal `u32`              | host time in s (`SYS_TIME`)|
//! | `period`     | base sample period, ms                  | [`DEFAULT_CONFIG`]         |
//! | `window`     | window length, ms                       | [`DEFAULT_CONFIG`]         |
//! | `resend`     | resend unacked reports after, ms        | [`LinkTimers::default`]    |
//! | `heartbeat`  | heartbeat period, ms                    | [`LinkTimers::default`]    |
//! | `exit_after` | exit (status 0) at this uptime, ms      | run forever                |
//! | `flash`      | host path of the flash file (journal image only) | none           |
//! | `wall0`      | the host's clock (Unix ms) when QEMU was started: the simulated sensors read their waveforms at true time, `wall0` + QEMU's elapsed time at the board's uptime 0 + uptime (journal image only) | waveforms on uptime |

use ferry_proto::link::{DeviceId, LinkConfig, MAX_DEVICE_ID};

use crate::link::LinkTimers;

/// Device id when the command line gives none.
pub const DEFAULT_DEVICE_ID: [u8; 8] = [0xE0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Sampling when the command line gives none: 100 ms, 1 s windows.
pub const DEFAULT_CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 100,
    window_ms: 1_000,
};

/// The emulated board's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// Device id.
    pub device_id: DeviceId,
    /// Boot number, if given.
    pub boot: Option<u32>,
    /// Initial sampling config.
    pub config: LinkConfig,
    /// Link timers.
    pub timers: LinkTimers,
    /// Uptime at which to exit, if any.
    pub exit_after_ms: Option<u64>,
    /// The host file that plays the flash chip (the journal image's redb
    /// journal), if given.
    pub flash: Option<heapless::String<MAX_FLASH_PATH>>,
    /// The host's clock (Unix ms) when QEMU was started, if given.
    pub wall0_ms: Option<u64>,
}

/// Longest `flash=` path.
pub const MAX_FLASH_PATH: usize = 200;

/// A command-line word that was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgError<'a> {
    /// `key=...` with an unknown key.
    UnknownKey(&'a str),
    /// A known key with a value that does not parse.
    BadValue(&'a str),
}

impl core::fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownKey(w) => write!(
                f,
                "unknown argument `{w}` (known: device, boot, period, window, resend, heartbeat, exit_after, flash, wall0)"
            ),
            Self::BadValue(w) => write!(f, "bad value in `{w}`"),
        }
    }
}

impl BootArgs {
    /// Parses a semihosting command line.
    pub fn parse(cmdline: &str) -> Result<Self, ArgError<'_>> {
        let mut args = Self {
            device_id: DeviceId::from_bytes(&DEFAULT_DEVICE_ID).unwrap_or_default(),
            boot: None,
            config: DEFAULT_CONFIG,
            timers: LinkTimers::default(),
            exit_after_ms: None,
            flash: None,
            wall0_ms: None,
        };
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let bad = ArgError::BadValue(word);
            let int = || value.parse::<u32>().map_err(|_| bad);
            match key {
                "device" => args.device_id = parse_hex_id(value).ok_or(bad)?,
                "boot" => args.boot = Some(int()?),
                "period" => args.config.sample_period_ms = int()?,
                "window" => args.config.window_ms = int()?,
                "resend" => args.timers.resend_after_ms = int()?,
                "heartbeat" => args.timers.heartbeat_every_ms = int()?,
                "exit_after" => args.exit_after_ms = Some(u64::from(int()?)),
                "wall0" => args.wall0_ms = Some(value.parse::<u64>().map_err(|_| bad)?),
                "flash" => {
                    let path = heapless::String::try_from(value).map_err(|_| bad)?;
                    args.flash = Some(path).filter(|p| !p.is_empty());
                    if args.flash.is_none() {
                        return Err(bad);
                    }
                }
                _ => return Err(ArgError::UnknownKey(word)),
            }
        }
        Ok(args)
    }
}

fn parse_hex_id(hex: &str) -> Option<DeviceId> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) || digits.len() > 2 * MAX_DEVICE_ID {
        return None;
    }
    let mut bytes = heapless::Vec::<u8, MAX_DEVICE_ID>::new();
    for pair in digits.chunks(2) {
        let s = core::str::from_utf8(pair).ok()?;
        bytes.push(u8::from_str_radix(s, 16).ok()?).ok()?;
    }
    DeviceId::from_bytes(&bytes)
}
