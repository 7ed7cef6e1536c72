//! Bearer tokens: who may call which operation on which ledgers.
//!
//! The token file holds one JSON object per line, never the token itself, only its
//! SHA-256 (tokens are 256-bit random strings, so a plain digest is enough; a stolen
//! file grants nothing):
//!
//! ```text
//! {"name":"checkout","sha256":"<64 hex>","operations":["create_transfers"],"ledgers":[840,978]}
//! {"name":"ops","sha256":"<64 hex>","operations":["*"],"ledgers":["*"]}
//! ```
//!
//! `tally token` makes a token and prints its line. A call carries the token as
//! `authorization: Bearer <token>`.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tally_types::QueryFilter;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Most tokens one file may hold.
pub const TOKENS_MAX: usize = 100_000;

/// An operation of the ledger service, as tokens name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `CreateAccounts`.
    CreateAccounts,
    /// `CreateTransfers`.
    CreateTransfers,
    /// `LookupAccounts`.
    LookupAccounts,
    /// `LookupTransfers`.
    LookupTransfers,
    /// `GetAccountTransfers`.
    GetAccountTransfers,
    /// `GetChangeEvents` and `SubscribeChangeEvents`.
    GetChangeEvents,
    /// `GetAccountBalances`.
    GetAccountBalances,
    /// `QueryAccounts`.
    QueryAccounts,
    /// `QueryTransfers`.
    QueryTransfers,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 9] = [
        Operation::CreateAccounts,
        Operation::CreateTransfers,
        Operation::LookupAccounts,
        Operation::LookupTransfers,
        Operation::GetAccountTransfers,
        Operation::GetChangeEvents,
        Operation::GetAccountBalances,
        Operation::QueryAccounts,
        Operation::QueryTransfers,
    ];

    /// The snake_case name used in the token file.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::CreateAccounts => "create_accounts",
            Operation::CreateTransfers => "create_transfers",
            Operation::LookupAccounts => "lookup_accounts",
            Operation::LookupTransfers => "lookup_transfers",
            Operation::GetAccountTransfers => "get_account_transfers",
            Operation::GetChangeEvents => "get_change_events",
            Operation::GetAccountBalances => "get_account_balances",
            Operation::QueryAccounts => "query_accounts",
            Operation::QueryTransfers => "query_transfers",
        }
    }

    /// The operation with this name; `subscribe_change_events` names the right of
    /// both change-event calls too, as `get_change_events` does.
    pub fn from_name(name: &str) -> Option<Operation> {
        if name == "subscribe_change_events" {
            return Some(Operation::GetChangeEvents);
        }
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// The token's name (for logs; never the secret).
    pub name: String,
    /// The operations it may call.
    pub operations: BTreeSet<Operation>,
    /// The ledgers it may touch; `None` = every ledger.
    pub ledgers: Option<BTreeSet<u32>>,
}

impl Rights {
    /// Everything: the rights of every call on a server without a token file.
    pub fn all() -> Rights {
        Rights {
            name: "anonymous".to_string(),
            operations: Operation::ALL.into_iter().collect(),
            ledgers: None,
        }
    }

    /// `PERMISSION_DENIED` unless the token may call `operation`.
    pub fn check_operation(&self, operation: Operation) -> Result<(), Status> {
        if self.operations.contains(&operation) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "token {:?} may not call {operation}",
                self.name
            )))
        }
    }

    /// True when the token may touch `ledger`.
    pub fn ledger_allowed(&self, ledger: u32) -> bool {
        self.ledgers
            .as_ref()
            .is_none_or(|set| set.contains(&ledger))
    }

    /// True when the token may touch every ledger.
    pub fn ledgers_all(&self) -> bool {
        self.ledgers.is_none()
    }

    /// `PERMISSION_DENIED` when a read found a record (`what` and its id) in a ledger
    /// outside the token's ledgers.
    pub fn check_read(
        &self,
        what: &str,
        found: impl IntoIterator<Item = (u128, u32)>,
    ) -> Result<(), Status> {
        match found
            .into_iter()
            .find(|&(_, ledger)| !self.ledger_allowed(ledger))
        {
            None => Ok(()),
            Some((id, _)) => Err(Status::permission_denied(format!(
                "token {:?} may not read {what} {id}: its ledger is not one of the token's",
                self.name
            ))),
        }
    }

    /// The query a token may run: one naming a ledger outside the token's ledgers is
    /// refused (`PERMISSION_DENIED`); one naming none is narrowed to the token's ledger
    /// when it has one, and refused when it has several, since a page drawn from every
    /// ledger and then filtered could come back short while more records match.
    pub fn scope_query(&self, filter: &mut QueryFilter) -> Result<(), Status> {
        let Some(allowed) = &self.ledgers else {
            return Ok(());
        };
        if filter.ledger != 0 {
            return if allowed.contains(&filter.ledger) {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "token {:?} may not query ledger {}",
                    self.name, filter.ledger
                )))
            };
        }
        let mut ledgers = allowed.iter();
        match (ledgers.next(), ledgers.next()) {
            (Some(&only), None) => {
                filter.ledger = only;
                Ok(())
            }
            (None, _) => Err(Status::permission_denied(format!(
                "token {:?} may read no ledger",
                self.name
            ))),
            (Some(_), Some(_)) => Err(Status::permission_denied(format!(
                "token {:?} may read several ledgers: the query must name one",
                self.name
            ))),
        }
    }

    /// `PERMISSION_DENIED` unless every event's ledger is allowed: the ledger each will
    /// take (a post, void or refund that gives 0 takes its transfer's, resolved by the
    /// caller), or `None` for an event that names no ledger and takes none (it fails
    /// with `ledger_must_not_be_zero`, touching nothing). A reference left unresolved
    /// (`Some(0)`: the transfer named is not stored) is refused to a token limited to
    /// some ledgers.
    pub fn check_ledgers(
        &self,
        ledgers: impl IntoIterator<Item = Option<u32>>,
    ) -> Result<(), Status> {
        let Some(allowed) = &self.ledgers else {
            return Ok(());
        };
        let taken = ledgers.into_iter().enumerate();
        for (index, ledger) in taken.filter_map(|(index, ledger)| Some((index, ledger?))) {
            if !allowed.contains(&ledger) {
                return Err(Status::permission_denied(format!(
                    "event {index}: token {:?} may not touch ledger {ledger}{}",
                    self.name,
                    if ledger == 0 {
                        " (a post, void or refund giving 0 takes that of the transfer it \
                         names when that one is stored; else give its ledger)"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }
}

/// The tokens a server accepts, by the SHA-256 of the token.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Arc<Rights>>,
}

/// Why a token file does not load.
#[derive(Debug)]
pub enum TokenFileError {
    /// The file could not be read.
    Read(std::path::PathBuf, std::io::Error),
    /// A line is not a valid token entry.
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// More than [`TOKENS_MAX`] tokens.
    TooMany,
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenFileError::Read(path, error) => {
                write!(f, "cannot read the token file {}: {error}", path.display())
            }
            TokenFileError::Line { line, reason } => {
                write!(f, "token file line {line}: {reason}")
            }
            TokenFileError::TooMany => write!(f, "token file holds more than {TOKENS_MAX}"),
        }
    }
}

impl std::error::Error for TokenFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenFileError::Read(_, error) => Some(error),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLine {
    name: String,
    sha256: String,
    operations: Vec<String>,
    ledgers: Vec<serde_json::Value>,
}

impl Tokens {
    /// Loads a token file (see the module docs).
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| TokenFileError::Read(path.to_path_buf(), error))?;
        Tokens::parse(&text)
    }

    /// Parses the text of a token file; blank lines and lines starting with `#` are
    /// skipped.
    pub fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        let mut tokens = Tokens::default();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let error = |reason: String| TokenFileError::Line {
                line: index + 1,
                reason,
            };
            let (digest, rights) = parse_line(trimmed).map_err(error)?;
            if tokens.by_digest.len() == TOKENS_MAX {
                return Err(TokenFileError::TooMany);
            }
            if tokens.by_digest.insert(digest, Arc::new(rights)).is_some() {
                return Err(error("the same token appears twice".to_string()));
            }
        }
        Ok(tokens)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// True when no token is accepted (every call is refused).
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The rights of the call's bearer token: `UNAUTHENTICATED` when the call has no
    /// `authorization: Bearer` header or an unknown token.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<&Rights, Status> {
        let header = metadata.get("authorization");
        self.authenticate_header(header.map(|value| value.as_encoded_bytes()))
            .map(|rights| rights.as_ref())
    }

    /// The rights of the bearer token in an `authorization` header's bytes, as
    /// [`Tokens::authenticate`].
    pub(crate) fn authenticate_header(
        &self,
        header: Option<&[u8]>,
    ) -> Result<&Arc<Rights>, Status> {
        let header =
            header.ok_or_else(|| Status::unauthenticated("missing authorization: Bearer token"))?;
        // Visible ASCII, spaces and tabs only, as an HTTP header's text.
        let text = header
            .iter()
            .all(|byte| *byte == b'\t' || (0x20..0x7f).contains(byte));
        let value = std::str::from_utf8(header)
            .ok()
            .filter(|_| text)
            .ok_or_else(|| Status::unauthenticated("authorization header is not text"))?;
        // The scheme is case-insensitive (RFC 7235 §2.1); the token is not.
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        self.by_digest
            .get(&token_digest(token.trim()))
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

fn parse_line(line: &str) -> Result<([u8; 32], Rights), String> {
    let entry: TokenLine = serde_json::from_str(line).map_err(|error| error.to_string())?;
    let digest = parse_digest(&entry.sha256)?;
    let mut operations = BTreeSet::new();
    for name in &entry.operations {
        if name == "*" {
            operations.extend(Operation::ALL);
        } else {
            operations.insert(
                Operation::from_name(name).ok_or_else(|| format!("unknown operation {name:?}"))?,
            );
        }
    }
    let mut ledgers = Some(BTreeSet::new());
    for value in &entry.ledgers {
        match value {
            serde_json::Value::String(star) if star == "*" => ledgers = None,
            serde_json::Value::Number(number) => {
                let ledger = number
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n != 0)
                    .ok_or_else(|| format!("ledger {number} is not in 1..=4294967295"))?;
                if let Some(set) = ledgers.as_mut() {
                    set.insert(ledger);
                }
            }
            other => return Err(format!("ledger {other} is neither a number nor \"*\"")),
        }
    }
    let rights = Rights {
        name: entry.name,
        operations,
        ledgers,
    };
    Ok((digest, rights))
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("sha256 must be 64 hex digits, not {hex:?}");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(digest)
}

/// The SHA-256 of a token, as the token file stores it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of a token in hex, for a token file line.
pub fn token_digest_hex(token: &str) -> String {
    token_digest(token)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The token file line granting `rights` to `token`.
pub fn token_line(token: &str, rights: &Rights) -> String {
    let operations: Vec<&str> = rights.operations.iter().map(|op| op.name()).collect();
    let ledgers: Vec<serde_json::Value> = match &rights.ledgers {
        None => vec![serde_json::Value::from("*")],
        Some(set) => set.iter().map(|l| serde_json::Value::from(*l)).collect(),
    };
    serde_json::json!({
        "name": rights.name,
        "sha256": token_digest_hex(token),
        "operations": operations,
        "ledgers": ledgers,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        let value = format!("Bearer {token}").parse().expect("ascii");
        metadata.insert("authorization", value);
        metadata
    }

    fn checkout() -> Rights {
        Rights {
            name: "checkout".to_string(),
            operations: [Operation::CreateTransfers].into_iter().collect(),
            ledgers: Some([840].into_iter().collect()),
        }
    }

    #[test]
    fn a_written_line_loads_back_and_authenticates() {
        let file = format!("# tokens\n\n{}\n", token_line("tly_secret", &checkout()));
        let tokens = Tokens::parse(&file).expect("parses");
        assert_eq!(tokens.len(), 1);
        let rights = tokens.authenticate(&bearer("tly_secret")).expect("known");
        assert_eq!(rights, &checkout());
        assert!(!file.contains("tly_secret"), "the secret is never stored");
    }

    #[test]
    fn refusals_are_unauthenticated() {
        let tokens = Tokens::parse(&token_line("good", &checkout())).expect("parses");
        let wrong = tokens.authenticate(&bearer("bad")).expect_err("unknown");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = tokens.authenticate(&MetadataMap::new()).expect_err("none");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic Zm9v".parse().expect("ascii"));
        let scheme = tokens.authenticate(&basic).expect_err("scheme");
        assert_eq!(scheme.code(), tonic::Code::Unauthenticated);
        let mut lower = MetadataMap::new();
        lower.insert("authorization", "bearer good".parse().expect("ascii"));
        assert!(
            tokens.authenticate(&lower).is_ok(),
            "the scheme is case-insensitive"
        );
    }

    #[test]
    fn operation_names_read_back_and_the_subscription_names_its_right() {
        for operation in Operation::ALL {
            assert_eq!(Operation::from_name(operation.name()), Some(operation));
        }
        let subscribe = Operation::from_name("subscribe_change_events");
        assert_eq!(subscribe, Some(Operation::GetChangeEvents));
        assert_eq!(Operation::from_name("subscribe"), None);
    }

    #[test]
    fn rights_refuse_other_operations_and_ledgers() {
        let rights = checkout();
        assert!(rights.check_operation(Operation::CreateTransfers).is_ok());
        let op = rights
            .check_operation(Operation::CreateAccounts)
            .expect_err("op");
        assert_eq!(op.code(), tonic::Code::PermissionDenied);
        assert!(rights.check_ledgers([Some(840), Some(840)]).is_ok());
        let other = rights
            .check_ledgers([Some(840), Some(978)])
            .expect_err("978");
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert!(
            other.message().starts_with("event 1"),
            "{}",
            other.message()
        );
        let unresolved = rights.check_ledgers([Some(0)]);
        assert!(unresolved.is_err(), "a reference must resolve");
        assert!(
            rights.check_ledgers([None, Some(840)]).is_ok(),
            "none taken"
        );
        assert!(Rights::all().check_ledgers([Some(0), Some(5)]).is_ok());
    }

    #[test]
    fn reads_and_queries_stay_within_the_ledgers() {
        let rights = checkout();
        assert!(rights.check_read("account", [(1, 840), (2, 840)]).is_ok());
        let other = rights
            .check_read("account", [(1, 840), (7, 978)])
            .expect_err("978");
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert!(other.message().contains("account 7"), "{}", other.message());

        let mut any = QueryFilter::default();
        rights.scope_query(&mut any).expect("narrowed");
        assert_eq!(any.ledger, 840, "the token's only ledger");
        let mut named = QueryFilter {
            ledger: 978,
            ..QueryFilter::default()
        };
        let refused = rights.scope_query(&mut named).expect_err("978");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let two = Rights {
            ledgers: Some([840, 978].into_iter().collect()),
            ..checkout()
        };
        let mut any = QueryFilter::default();
        let refused = two.scope_query(&mut any).expect_err("must name one");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let mut all = QueryFilter::default();
        Rights::all().scope_query(&mut all).expect("every ledger");
        assert_eq!(all.ledger, 0, "left as asked");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let cases = [
            r#"{"name":"a","sha256":"xyz","operations":[],"ledgers":[]}"#,
            r#"{"name":"a","sha256":"00","operations":["teleport"],"ledgers":[]}"#,
            r#"{"name":"a","operations":[],"ledgers":[]}"#,
            "not json",
        ];
        for case in cases {
            let text = format!("\n{case}\n");
            match Tokens::parse(&text) {
                Err(TokenFileError::Line { line: 2, .. }) => {}
                other => panic!("{case}: {other:?}"),
            }
        }
        let ledger_zero = format!(
            r#"{{"name":"a","sha256":"{}","operations":["*"],"ledgers":[0]}}"#,
            token_digest_hex("t")
        );
        assert!(Tokens::parse(&ledger_zero).is_err());
        let twice = format!("{0}\n{0}\n", token_line("t", &checkout()));
        assert!(Tokens::parse(&twice).is_err());
    }
}
