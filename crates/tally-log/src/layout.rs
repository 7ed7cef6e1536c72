//! Byte-level access to the on-disk layout (`docs/log-format.md`), for tests and fuzzing:
//! they write damaged or hand-made files and check what recovery makes of them.
//!
//! Only with the `fault-injection` feature. The log itself needs none of this from the
//! outside: [`crate::Wal`] writes and reads every byte.

pub use crate::format::{
    CLOSE_MARKER_NAME, CLOSE_MARKER_TEMP_NAME, FRAME_HEADER_SIZE, FrameError, FrameHeader,
    HeaderError, SEGMENT_HEADER_SIZE, SPARE_SEGMENT_NAME, SPARE_SEGMENT_TEMP_NAME,
    decode_close_marker, decode_frame, decode_frame_header, decode_segment_header, encode_frame,
    encode_segment_header, find_valid_frame_header, is_zero, parse_segment_name, segment_name,
    snapshot_name,
};
