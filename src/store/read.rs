//! Reading blobs as streams of bytes, whole or a range, without holding
//! them in memory (for serving them over HTTP).

use std::ops::Range;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::{GetOptions, GetRange};

use super::{Result, Store, StoreError};
use crate::hash::Hash;

impl Store {
    /// The bytes `range` of a blob, as a stream of chunks.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if the store lacks the blob; backend errors,
    /// before the stream starts or as one of its items.
    pub async fn blob_range(&self, h: &Hash, range: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let what = format!("blob {h}");
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let result = self.blobs.get_opts(&Self::blob_path(h), options).await.map_err(|source| match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound(what.clone()),
            source => StoreError::Backend { what: format!("get {what}"), source },
        })?;
        let stream = result.into_stream();
        Ok(stream
            .map(move |r| r.map_err(|source| StoreError::Backend { what: format!("read {what}"), source }))
            .boxed())
    }
}
