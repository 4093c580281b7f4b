//! The merged tree of an image, listed like `tar -tv` or as JSON.

use base64::Engine as _;
use serde::Serialize;
use std::collections::BTreeMap;
use zran::tar::EntryKind;
use zran::tree::{Inode, Tree};

#[derive(Serialize)]
pub struct FileRecord {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub mtime: Option<Mtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    pub xattrs: BTreeMap<String, String>,
    pub nlink: u32,
    pub inode: usize,
}

#[derive(Serialize)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File | EntryKind::Hardlink => "file",
        EntryKind::Symlink => "symlink",
        EntryKind::Char => "char",
        EntryKind::Block => "block",
        EntryKind::Directory => "dir",
        EntryKind::Fifo => "fifo",
    }
}

pub fn records(tree: &Tree) -> Vec<FileRecord> {
    tree.walk()
        .into_iter()
        .map(|(path, id)| {
            let i: &Inode = &tree.inodes[id];
            let dev = matches!(i.kind, EntryKind::Char | EntryKind::Block);
            FileRecord {
                path: String::from_utf8_lossy(&path).into_owned(),
                kind: kind_name(i.kind),
                mode: i.mode,
                uid: i.uid,
                gid: i.gid,
                size: (i.kind == EntryKind::File).then_some(i.size),
                mtime: i.mtime.map(|(sec, nsec)| Mtime { sec, nsec }),
                target: (i.kind == EntryKind::Symlink).then(|| String::from_utf8_lossy(&i.link).into_owned()),
                major: dev.then_some(i.devmajor),
                minor: dev.then_some(i.devminor),
                xattrs: i
                    .xattrs
                    .iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(k).into_owned(),
                            base64::engine::general_purpose::STANDARD.encode(v),
                        )
                    })
                    .collect(),
                nlink: i.nlink,
                inode: id,
            }
        })
        .collect()
}

/// `drwxr-xr-x` and friends.
fn mode_string(kind: EntryKind, mode: u32) -> String {
    let t = match kind {
        EntryKind::Directory => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Char => 'c',
        EntryKind::Block => 'b',
        EntryKind::Fifo => 'p',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in
        [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')]
    {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn date(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

pub fn print_listing(tree: &Tree) {
    // Hardlinked names are tied by a group number, in walk order, so that listings of the same
    // tree read from different places compare equal.
    let mut groups: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (path, id) in tree.walk() {
        let i = &tree.inodes[id];
        let size = match i.kind {
            EntryKind::Char | EntryKind::Block => format!("{},{}", i.devmajor, i.devminor),
            _ => i.size.to_string(),
        };
        // A directory no layer has an entry for has no time of its own: shown as the epoch, as
        // it is stored in a bootstrap.
        let when = date(i.mtime.map_or(0, |(s, _)| s));
        let mut line = format!(
            "{} {}/{} {:>12} {} {}",
            mode_string(i.kind, i.mode),
            i.uid,
            i.gid,
            size,
            when,
            String::from_utf8_lossy(&path)
        );
        if i.kind == EntryKind::Symlink {
            line.push_str(" -> ");
            line.push_str(&String::from_utf8_lossy(&i.link));
        }
        if i.kind != EntryKind::Directory && i.nlink > 1 {
            let next = groups.len() + 1;
            let group = *groups.entry(id).or_insert(next);
            line.push_str(&format!(" [{} links, group {group}]", i.nlink));
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(mode_string(EntryKind::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(EntryKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(EntryKind::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(EntryKind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(date(0), "1970-01-01 00:00");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(date(-1), "1969-12-31 23:59");
    }
}
