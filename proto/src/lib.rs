//! The Tributary protobuf contract (`proto/tributary/v1`), generated at build
//! time, plus the encoded descriptor set that server reflection serves.

pub mod tributary {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("tributary.v1");
    }
}

pub use tributary::v1;

/// The descriptor set of every file in `proto/` and its imports (well-known
/// types and `google.rpc.Status` included), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tributary_descriptor");

/// Fully qualified service names, as health checks and reflection list them.
pub mod service_names {
    pub const INGEST: &str = "tributary.v1.IngestService";
    pub const QUERY: &str = "tributary.v1.QueryService";
    pub const ADMIN: &str = "tributary.v1.AdminService";
}

pub mod json;
pub mod validate;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
