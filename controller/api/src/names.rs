//! Names the contract accepts, with nothing else to depend on (the formation file's
//! checks, the backup settings and the API all use them).

/// A formation name (`metadata.name`): 1-63 lower-case letters, digits, `_` or `-`,
/// starting with a letter.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
