//! Where incoming blobs wait while they are received and verified, and how
//! they enter the store: on a local store unnamed (`O_TMPFILE`) and linked
//! into place where the file system allows, else by name and renamed (or,
//! on a remote store, uploaded).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Result, Store, StoreError, backend, io_at};
use crate::hash::Hash;

/// Staging files made by this process, for unique names across stores.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// Whether an unnamed file made in `staging` can be linked to a name there.
pub(super) fn probe_unnamed(staging: &Path) -> bool {
    let probe = staging.join(format!("probe-{}", std::process::id()));
    let file = crate::fsutil::create_unnamed(staging, 0o600);
    let works = file.and_then(|f| crate::fsutil::link_unnamed(&f, &probe)).is_ok();
    let _ = std::fs::remove_file(&probe);
    works
}

impl Store {
    /// A new, empty staging file with no name, for an incoming blob that
    /// [`Store::publish_unnamed`] then links into place: nothing to create,
    /// rename and remove in the staging directory that every incoming blob
    /// shares (each of those holds its lock, and ext4 can take long to find
    /// a free inode). `None` for a remote store or without `O_TMPFILE`:
    /// use [`Store::staging_file`].
    pub fn unnamed_staging_file(&self) -> Option<std::fs::File> {
        self.unnamed.then(|| crate::fsutil::create_unnamed(&self.staging, 0o666).ok()).flatten()
    }

    /// Names a file from [`Store::unnamed_staging_file`], verified to hash
    /// to `h`, as that blob. A blob already there stays: its name is its content.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn publish_unnamed(&self, h: &Hash, file: &std::fs::File) -> Result<()> {
        let Some(root) = &self.local_root else {
            let why = "unnamed staging files need a local store".into();
            return Err(StoreError::Unsupported { location: self.location.clone(), why });
        };
        let dest = root.join(Self::blob_path(h).as_ref());
        let link = || crate::fsutil::link_unnamed(file, &dest);
        let linked = match link() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = dest.parent().expect("blob paths have a parent");
                std::fs::create_dir_all(parent).map_err(io_at(parent))?;
                link()
            }
            other => other,
        };
        match linked {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_at(&dest)(e)),
            _ => Ok(()),
        }
    }

    /// A name in the staging directory that nothing holds yet.
    pub fn staging_name(&self) -> PathBuf {
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        self.staging.join(format!("{}-{n}", std::process::id()))
    }

    /// A new, empty staging file for an incoming blob.
    ///
    /// # Errors
    ///
    /// I/O errors creating it.
    pub fn staging_file(&self) -> Result<(PathBuf, std::fs::File)> {
        let path = self.staging_name();
        let file = std::fs::File::create_new(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        Ok((path, file))
    }

    /// Moves a staged file, already verified to hash to `h`, into the store.
    ///
    /// # Errors
    ///
    /// I/O or backend errors; the staged file is removed either way.
    pub async fn publish_blob(&self, h: &Hash, staged: &Path) -> Result<()> {
        let result = self.publish_inner(h, staged).await;
        // A local store renamed it away; a remote one was sent a copy.
        if result.is_err() || self.local_root.is_none() {
            let _ = std::fs::remove_file(staged);
        }
        result
    }

    async fn publish_inner(&self, h: &Hash, staged: &Path) -> Result<()> {
        let location = Self::blob_path(h);
        if let Some(root) = &self.local_root {
            let dest = root.join(location.as_ref());
            let parent = dest.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
            return std::fs::rename(staged, &dest).map_err(io_at(&dest));
        }
        backend::upload(&self.blobs, &location, staged).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn unnamed_staging_files_become_blobs_and_leave_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let h = Hash::of(b"blob");
        for _ in 0..2 {
            let mut file = store.unnamed_staging_file().expect("the test file system has O_TMPFILE");
            file.write_all(b"blob").unwrap();
            // The second time the blob is there already: that is no error.
            store.publish_unnamed(&h, &file).unwrap();
        }
        assert!(store.has_blob(&h).await.unwrap());
        let blob = store.blob_file(&h).await.unwrap().path.clone();
        assert_eq!(std::fs::read(&blob).unwrap(), b"blob");
        assert_eq!(std::fs::read_dir(&store.staging).unwrap().count(), 0, "nothing left in staging");
        // The same mode as a blob staged by name.
        let (named, _) = store.staging_file().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&blob), mode(&named));
    }
}
