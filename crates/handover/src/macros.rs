//! Feature-gate helpers.

/// Items available with the `tokio` feature, marked as such in the docs.
macro_rules! cfg_tokio {
    ($($item:item)*) => {
        $(
            #[cfg(feature = "tokio")]
            #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
            $item
        )*
    }
}

pub(crate) use cfg_tokio;
