//! Text from outside (a provider's scopes, errors and addresses) made safe
//! to show on a terminal: tokd's sanitizer and tokctl's output use the same
//! rule for which characters never reach a screen.

/// Whether `c` must not reach a terminal as it is: a control character
/// (C0, DEL, C1: escape sequences, which retitle windows, clear screens
/// or print links, start with one), a bidirectional control (which shows
/// text in another order than it is read), or an invisible character
/// (zero-width spaces and joiners, the word joiner, the byte order mark,
/// the soft hyphen, line and paragraph separators, the combining grapheme
/// joiner, Hangul and Mongolian fillers, variation selectors and tag
/// characters).
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{E0000}'..='\u{E0FFF}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{206A}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// `text` with every [`hidden`] character gone, except line breaks
/// (kept, for text of several lines); whitespace among them (tab, CR, the
/// line separators) becomes a space.
pub fn for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('\n'),
            c if hidden(c) && c.is_whitespace() => out.push(' '),
            c if hidden(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// A length of time in its two largest units, each with its letter:
/// `45s`, `2m 5s`, `1h 59m`, `2d`, `3d 4h`.
pub fn span(secs: u64) -> String {
    let secs = rounded(secs);
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let parts: [(u64, &str); 4] = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .enumerate()
        .filter(|(i, (n, _))| *i == 0 || *n > 0)
        .map(|(_, (n, unit))| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Keeps the two largest units: 1h 59m, 2m 5s, 3d 4h.
fn rounded(secs: u64) -> u64 {
    match secs {
        0..3600 => secs,
        3600..86_400 => secs - secs % 60,
        _ => secs - secs % 3600,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_bidi_and_invisible_characters_never_reach_a_terminal() {
        let attacks = [
            ("\u{1b}]0;owned\u{7}read", "]0;ownedread"),
            ("\u{1b}[2Jread", "[2Jread"),
            (
                "\u{1b}]8;;https://evil.example\u{1b}\\click\u{1b}]8;;\u{1b}\\",
                "]8;;https://evil.example\\click]8;;\\",
            ),
            ("\u{9b}31mred", "31mred"),
            ("abc\u{202E}fed", "abcfed"),
            ("a\u{2066}b\u{2069}c\u{200F}", "abc"),
            ("to\u{200B}ken\u{FEFF}", "token"),
            ("t\u{034F}o\u{3164}k\u{FE0F}e\u{E0041}n\u{115F}", "token"),
            ("tab\there\rcr", "tab here cr"),
            ("two\nlines\u{2028}sep", "two\nlines sep"),
        ];
        for (given, shown) in attacks {
            assert_eq!(for_terminal(given), shown, "{given:?}");
        }
        for fine in ["read write", "Müller's café — ok", "日本語", "repo:status"] {
            assert_eq!(for_terminal(fine), fine);
        }
    }
}
