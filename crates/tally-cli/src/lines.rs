//! Reads request lines from a byte stream, holding at most a bounded number of bytes of
//! any one line: a line past the bound is skipped to its end and reported by length,
//! and a line that is not UTF-8 is reported as such. Neither stops the stream: each bad
//! line gets its own error answer (docs/spec.md §4: a bad line rejects that line, not the rest).

use std::io::{self, BufRead};

/// One line read by [`read_line_bounded`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line, without its `\n` (or `\r\n`).
    Text(String),
    /// The line is longer than the bound: its length in bytes (without the newline).
    TooLong(u64),
    /// The line is not UTF-8: the offset of the first byte that is not.
    NotUtf8(usize),
}

/// Reads the next line of `reader`, keeping at most `bytes_max` bytes of it in `buffer`
/// (reused across calls). `None` at the end of the stream.
pub fn read_line_bounded(
    reader: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    bytes_max: usize,
) -> io::Result<Option<Line>> {
    buffer.clear();
    let mut length: u64 = 0;
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (chunk, ends_line) = match available.iter().position(|&byte| byte == b'\n') {
            Some(newline) => (&available[..newline], true),
            None => (available, false),
        };
        length += chunk.len() as u64;
        if length <= bytes_max as u64 {
            buffer.extend_from_slice(chunk);
        }
        let used = chunk.len() + usize::from(ends_line);
        reader.consume(used);
        if ends_line {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buffer.last() == Some(&b'\r') && length <= bytes_max as u64 {
        buffer.pop();
        length -= 1;
    }
    if length > bytes_max as u64 {
        return Ok(Some(Line::TooLong(length)));
    }
    debug_assert_eq!(buffer.len() as u64, length);
    Ok(Some(match std::str::from_utf8(buffer) {
        Ok(text) => Line::Text(text.to_string()),
        Err(error) => Line::NotUtf8(error.valid_up_to()),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], bytes_max: usize) -> Vec<Line> {
        // A tiny buffer, so that lines cross the reader's refills.
        let mut reader = io::BufReader::with_capacity(3, input);
        let mut buffer = Vec::new();
        let mut lines = Vec::new();
        while let Some(line) = read_line_bounded(&mut reader, &mut buffer, bytes_max).unwrap() {
            lines.push(line);
            assert!(buffer.capacity() <= 64, "the buffer stays bounded");
        }
        lines
    }

    #[test]
    fn lines_long_lines_and_bad_utf8_each_come_back_as_one_line() {
        let text = |s: &str| Line::Text(s.to_string());
        let input = b"ab\r\n\nx\xffy\n0123456789012345\nlast";
        assert_eq!(
            read_all(input, 10),
            vec![
                text("ab"),
                text(""),
                Line::NotUtf8(1),
                Line::TooLong(16),
                text("last")
            ]
        );
        assert_eq!(read_all(b"", 10), vec![]);
        assert_eq!(read_all(b"\n", 10), vec![text("")]);
        assert_eq!(read_all("é\n".as_bytes(), 10), vec![text("é")]);
        // Exactly at the bound is fine; one byte past is not.
        assert_eq!(read_all(b"0123456789\n", 10), vec![text("0123456789")]);
        assert_eq!(read_all(b"01234567890\n", 10), vec![Line::TooLong(11)]);
    }
}
