//! Small durable-file helpers shared by the stores.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically: temp file, fsync, rename, fsync
/// of the directory. A crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}
