//! Asking the mirror to unpack blobs from archives it has (see the server's
//! `unpack` module), in requests within its bounds.

use super::{Client, ClientError};
use crate::hash::Hash;
use crate::rpc::{MAX_HASHES, MAX_UNPACK_BYTES, pb};

/// An archive the mirror has and the members to store from it: name, blob, size.
pub type UnpackArchive = (Hash, Vec<(String, Hash, u64)>);

impl Client {
    /// True when the mirror takes [`unpack`](Self::unpack).
    pub fn unpacks(&self) -> bool {
        self.unpack_blobs
    }

    /// Asks the mirror to store these members of archives it has; returns
    /// how many it stored. The others (and any larger than one request may
    /// unpack) are for the caller to send.
    ///
    /// # Errors
    ///
    /// Refusals (a read-only token, a malformed request).
    pub async fn unpack(&mut self, archives: &[UnpackArchive]) -> Result<u64, ClientError> {
        let mut requests = vec![pb::UnpackBlobsRequest::default()];
        let (mut count, mut bytes) = (0usize, 0u64);
        for (archive, members) in archives {
            for (name, hash, size) in members.iter().filter(|m| m.2 <= MAX_UNPACK_BYTES) {
                if count == MAX_HASHES || bytes + size > MAX_UNPACK_BYTES {
                    requests.push(pb::UnpackBlobsRequest::default());
                    (count, bytes) = (0, 0);
                }
                let req = requests.last_mut().expect("one at least");
                if req.archives.last().is_none_or(|a| a.hash != archive.as_bytes()) {
                    req.archives.push(pb::UnpackArchive { hash: archive.as_bytes().to_vec(), members: Vec::new() });
                }
                let member = pb::UnpackMember { name: name.clone(), hash: hash.as_bytes().to_vec(), size: *size };
                req.archives.last_mut().expect("pushed above").members.push(member);
                (count, bytes) = (count + 1, bytes + size);
            }
        }
        let mut stored = 0;
        for req in requests.into_iter().filter(|r| !r.archives.is_empty()) {
            stored += self.inner.unpack_blobs(req).await.map_err(|s| self.refused(s))?.into_inner().stored;
        }
        Ok(stored)
    }
}
