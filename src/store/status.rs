//! The outbound worker's current choices, as `pimail doctor` shows them:
//! `<data_dir>/outbound.status`, `key: value` lines (the address families
//! used, the route, the cached MTA-STS policies). The worker rewrites it
//! when a choice changes; it is a report, never read back by the worker.

use std::path::{Path, PathBuf};

pub const FILE: &str = "outbound.status";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Writes the lines (keys may repeat).
pub fn write(data_dir: &Path, lines: &[(String, String)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (k, v) in lines {
        // One line each, whatever the value holds.
        text += &format!("{k}: {}\n", v.replace(['\r', '\n'], " "));
    }
    crate::util::paths::write_status(&path(data_dir), text.as_bytes())
}

/// The lines, or none when the server has not written the file yet.
pub fn read(data_dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path(data_dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("pimail-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = vec![
            ("family".to_string(), "IPv4 only (x: y)".to_string()),
            (
                "mta-sts".to_string(),
                "a.example enforce\nsneaky".to_string(),
            ),
        ];
        super::write(&dir, &lines).unwrap();
        let back = super::read(&dir);
        assert_eq!(back[0], lines[0]);
        assert_eq!(back[1].1, "a.example enforce sneaky");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
