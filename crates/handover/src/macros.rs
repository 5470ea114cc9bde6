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

/// `TryFrom` both ways between [`crate::Socket`] and tokio socket types, through their std
/// counterparts (`tokio_type => std_type`).
#[cfg(feature = "tokio")]
macro_rules! tokio_conversions {
    ($($ty:ty => $std:ty),* $(,)?) => {$(
            impl TryFrom<$crate::Socket> for $ty {
                type Error = $crate::Error;

                /// Checks the kind, makes the socket non-blocking and registers it with the
                /// current tokio runtime (so it must be called from within one).
                fn try_from(s: $crate::Socket) -> $crate::Result<$ty> {
                    $crate::sys::async_io::require_runtime()?;
                    let std = <$std>::try_from(s)?;
                    std.set_nonblocking(true)?;
                    Ok(<$ty>::from_std(std)?)
                }
            }

            impl TryFrom<$ty> for $crate::Socket {
                type Error = $crate::Error;

                /// Deregisters the socket from tokio; it stays non-blocking.
                fn try_from(s: $ty) -> $crate::Result<$crate::Socket> {
                    Ok($crate::Socket::from(s.into_std()?))
                }
            }
    )*};
}

#[cfg(feature = "tokio")]
pub(crate) use tokio_conversions;
