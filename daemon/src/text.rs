//! Text from outside tokd (a provider's error, a secret command's stderr)
//! made fit to show a human: one line, no markup, no control characters,
//! bounded. The lowest room: it depends on nothing of tokd's (which
//! characters never reach a screen is `tokd_shared::text`'s rule, which
//! tokctl's output keeps too).

/// Makes provider text safe to show: no control characters, no markup,
/// at most `limit` characters.
pub fn sanitize(text: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut last_space = true;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            _ if in_tag => {}
            c if c.is_whitespace() || c.is_control() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            // Bidirectional controls and invisible characters: gone (an
            // error description could otherwise show reversed).
            c if tokd_shared::text::hidden(c) => {}
            c => {
                out.push(c);
                last_space = false;
            }
        }
    }
    let trimmed = out.trim();
    if trimmed.chars().count() > limit {
        let cut: String = trimmed.chars().take(limit).collect();
        format!("{}…", cut.trim_end())
    } else {
        trimmed.to_owned()
    }
}

/// An error and its causes on one line, each cause once: a cause whose
/// words the text already holds (errors that print their source) is not
/// repeated, so a missing file reads "… (os error 2)" once, not twice.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_markup_and_control_characters() {
        assert_eq!(
            sanitize(
                "<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>",
                80
            ),
            "502 Bad Gateway nginx"
        );
        assert_eq!(sanitize("a\u{1b}[31mred\r\nline", 80), "a [31mred line");
        assert_eq!(
            sanitize(&"x".repeat(300), 10),
            format!("{}…", "x".repeat(10))
        );
        assert_eq!(sanitize("   ", 10), "");
        // Shown reversed, or with invisible parts: neither.
        assert_eq!(
            sanitize("invalid \u{202E}tnega-resu\u{202C} client\u{200B}", 80),
            "invalid tnega-resu client"
        );
        assert_eq!(sanitize("a\u{9b}31mb\u{2066}c", 80), "a 31mbc");
    }
}
