//! `tally events`: the change events of a data directory (a single node's or a cluster
//! replica's) as JSON Lines, read from its event journal without the directory's lock
//! (docs/spec.md §2 "Change events", §4).

use clap::Args;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tally_log::LogError;
use tally_log::events::{EventReader, UnreadableTail};
use tally_types::CHANGE_EVENTS_LIMIT_MAX;
use tally_types::currency::CurrencyTable;

/// How long `--follow` waits before looking for new events again.
const FOLLOW_POLL_INTERVAL_MS: u64 = 20;

/// How long a frame that does not check may stay at the end of the journal before it
/// is reported: a frame being written reads so only for an instant.
const UNREADABLE_TAIL_SETTLE_MS: u64 = 500;

/// The journal's directory inside a data directory.
pub(crate) const EVENTS_DIR_NAME: &str = "events";

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    #[arg(long)]
    data: PathBuf,
    /// Print only events with a timestamp greater than TS (default: every event kept).
    #[arg(long, value_name = "TS")]
    after: Option<u64>,
    /// After the last event, keep waiting for new ones and print them as they come.
    #[arg(long)]
    follow: bool,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

/// Prints the events, one line each, flushed per line. A closed stdout ends it quietly.
pub(crate) fn events(args: EventsArgs) -> Result<ExitCode, String> {
    // A single node and a cluster replica both keep their journal in DATA/events.
    crate::require_any_dir(&args.data)?;
    let dir = args.data.join(EVENTS_DIR_NAME);
    let mut reader = EventReader::open(&dir).map_err(|error| error.to_string())?;
    let currencies = CurrencyTable::default();
    let Some(mut timestamp_min) = args.after.map_or(Some(0), |after| after.checked_add(1)) else {
        return Ok(ExitCode::SUCCESS); // Nothing comes after the last timestamp.
    };
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut out = io::stdout().lock();
    let mut tail_watch = TailWatch::default();
    while remaining > 0 {
        let limit = usize::try_from(remaining).map_or(CHANGE_EVENTS_LIMIT_MAX, |remaining| {
            remaining.min(CHANGE_EVENTS_LIMIT_MAX)
        });
        let events = match reader.read(timestamp_min, limit) {
            Ok(events) => events,
            // Without --after, "every event" means every event still kept.
            Err(LogError::EventsRetired {
                next_timestamp_kept,
                ..
            }) if args.after.is_none() && timestamp_min < next_timestamp_kept => {
                timestamp_min = next_timestamp_kept;
                continue;
            }
            Err(error) => return Err(error.to_string()),
        };
        if events.is_empty() {
            if let Some(tail) = reader.unreadable_tail() {
                if tail_watch.settled(tail) {
                    report_unreadable_tail(tail, args.follow)?;
                }
            } else if !args.follow {
                break;
            }
            std::thread::sleep(Duration::from_millis(FOLLOW_POLL_INTERVAL_MS));
            continue;
        }
        for event in &events {
            let line = tally_json::change_event_line(event, &currencies);
            let written = writeln!(out, "{line}").and_then(|()| out.flush());
            match written {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(error) => return Err(format!("writing stdout: {error}")),
            }
            timestamp_min = event.timestamp + 1;
            remaining -= 1;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long the reader has been stopped at one frame that does not check.
#[derive(Default)]
struct TailWatch {
    at: Option<(std::path::PathBuf, u64, Instant)>,
    reported: bool,
}

impl TailWatch {
    /// Whether `tail` has stayed long enough to be reported, once.
    fn settled(&mut self, tail: &UnreadableTail) -> bool {
        match &self.at {
            Some((path, offset, _)) if *path == tail.path && *offset == tail.offset => {}
            _ => {
                self.at = Some((tail.path.clone(), tail.offset, Instant::now()));
                self.reported = false;
            }
        }
        let since = self
            .at
            .as_ref()
            .map_or(Duration::ZERO, |(_, _, since)| since.elapsed());
        let settled = !self.reported && since >= Duration::from_millis(UNREADABLE_TAIL_SETTLE_MS);
        self.reported |= settled;
        settled
    }
}

/// What a frame that does not check where the journal ends is, in words.
pub(crate) enum UnreadableTailFinding {
    /// A valid frame follows it: damage inside the journal.
    Damaged(String),
    /// Nothing valid follows it: a write cut short by a crash, or damage to the end.
    CutShort(String),
}

/// Tells `tail` apart, for `tally events` and `tally verify` alike.
pub(crate) fn unreadable_tail_finding(
    tail: &UnreadableTail,
) -> Result<UnreadableTailFinding, LogError> {
    let at = format!(
        "{} offset {}: {}",
        tail.path.display(),
        tail.offset,
        tail.reason
    );
    Ok(match tail.valid_frame_after()? {
        Some(valid) => UnreadableTailFinding::Damaged(format!(
            "change-event journal damaged at {at}; a valid frame follows at byte {valid} \
             (the ledger cuts the journal there and writes its events again from the log \
             when it next opens)"
        )),
        None => UnreadableTailFinding::CutShort(format!(
            "the change-event journal ends in a frame that does not check at {at} (a \
             write cut short by a crash, or damage); the events after it are in the log, \
             and the ledger writes them again when it next opens"
        )),
    })
}

/// A frame that does not check where the journal ends: damage when a valid frame
/// follows it (an error), else a write cut short by a crash (a warning on stderr; an
/// error without `--follow`, since events are missing from what was printed).
fn report_unreadable_tail(tail: &UnreadableTail, follow: bool) -> Result<(), String> {
    match unreadable_tail_finding(tail).map_err(|error| error.to_string())? {
        UnreadableTailFinding::Damaged(message) => Err(message),
        UnreadableTailFinding::CutShort(message) if follow => {
            eprintln!("tally events: warning: {message}");
            Ok(())
        }
        UnreadableTailFinding::CutShort(message) => Err(message),
    }
}
