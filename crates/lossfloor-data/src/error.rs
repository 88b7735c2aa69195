//! The crate's error type.

use std::path::PathBuf;

/// Errors from building or loading a dataset. Every message names the file (and, where it
/// applies, the archive entry, key, record or byte offset) and says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error while reading `path`.
    #[error("{}: {context}: {source}", path.display())]
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// What was being done, e.g. "reading file".
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `path` does not exist; `hint` says what was expected there (or how to install it).
    #[error("{}: not found; {hint}", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What should be there, or how to get it.
        hint: String,
    },
    /// The contents of `path` do not match the expected format.
    #[error("{}: {detail}", path.display())]
    Format {
        /// The offending file (or archive).
        path: PathBuf,
        /// What is wrong and what was expected.
        detail: String,
    },
    /// A dataset spec string could not be parsed.
    #[error("bad dataset spec {spec:?}: {detail}")]
    Spec {
        /// The spec string as given.
        spec: String,
        /// What is wrong, listing the accepted forms.
        detail: String,
    },
    /// In-memory data handed to a [`crate::Dataset`] constructor is inconsistent.
    #[error("{origin}: {detail}")]
    Invalid {
        /// The dataset's source string.
        origin: String,
        /// What is wrong and what was expected.
        detail: String,
    },
}

impl DataError {
    pub(crate) fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, context: &str, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            context: context.to_string(),
            source,
        }
    }
}
