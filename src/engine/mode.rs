//! The engine's compile-time choices: the body mode ([`Once`], [`Replay`]) and the error mode
//! ([`Infallible`], [`Error`]) of a scheme, and how they combine.

use std::convert::Infallible;
use std::fmt;

use crate::engine::body::ReplayBody;
use crate::engine::error::{BoxError, Error};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Once {}
    impl Sealed for super::Replay {}
    impl Sealed for std::convert::Infallible {}
    impl Sealed for crate::Error {}
}

/// Chooses the request body type the engine gives the wrapped service. Implemented by [`Once`]
/// and [`Replay`] only.
pub trait BodyMode: sealed::Sealed + FitsIn<Replay> + Send + Sync + 'static {
    /// The body type the wrapped service receives for a caller's body `B`.
    type Body<B>;
    /// Whether schemes of this mode may retry.
    const REPLAY: bool;
    /// Wraps the caller's body for the first exchange; returns the handle that can replay it.
    fn first<B>(body: B, limit: usize) -> (Self::Body<B>, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static;
    /// A body for another exchange, if this mode replays.
    fn again<B>(replay: &ReplayBody<B>) -> Option<Self::Body<B>>;
}

/// [`BodyMode`] of schemes that never retry: the body passes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Once;

/// [`BodyMode`] of schemes that may retry: the body is wrapped in a [`ReplayBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay;

impl BodyMode for Once {
    type Body<B> = B;
    const REPLAY: bool = false;
    fn first<B>(body: B, _limit: usize) -> (B, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static,
    {
        (body, None)
    }
    fn again<B>(_replay: &ReplayBody<B>) -> Option<B> {
        None
    }
}

impl BodyMode for Replay {
    type Body<B> = ReplayBody<B>;
    const REPLAY: bool = true;
    fn first<B>(body: B, limit: usize) -> (ReplayBody<B>, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static,
    {
        let body = ReplayBody::new(body, limit);
        let replay = body.clone_for_replay();
        (body, Some(replay))
    }
    fn again<B>(replay: &ReplayBody<B>) -> Option<ReplayBody<B>> {
        Some(replay.clone_for_replay())
    }
}

/// Chooses the error type of the layer. Implemented by [`Infallible`] (the wrapped service's
/// error passes through) and [`Error`](crate::Error) only.
pub trait ErrorMode: sealed::Sealed + fmt::Debug + Send + Sized + 'static {
    /// The layer's error type when the wrapped service fails with `E`.
    type Out<E>;
    /// Wraps the service's error.
    fn inner<E: Into<BoxError>>(err: E) -> Self::Out<E>;
    /// Converts the scheme's own error.
    fn scheme<E>(self) -> Self::Out<E>;
    /// Reports that the request body could not be read.
    fn body<E>(err: BoxError) -> Result<Self::Out<E>, BoxError>;
}

impl ErrorMode for Infallible {
    type Out<E> = E;
    fn inner<E: Into<BoxError>>(err: E) -> E {
        err
    }
    fn scheme<E>(self) -> E {
        match self {}
    }
    fn body<E>(err: BoxError) -> Result<E, BoxError> {
        Err(err)
    }
}

impl ErrorMode for Error {
    type Out<E> = Error;
    fn inner<E: Into<BoxError>>(err: E) -> Error {
        Error::inner(err)
    }
    fn scheme<E>(self) -> Error {
        self
    }
    fn body<E>(err: BoxError) -> Result<Error, BoxError> {
        Ok(Error::body(err))
    }
}

/// The mode of two schemes combined: [`Replay`] if either replays.
pub trait JoinMode<M: BodyMode>: BodyMode {
    /// The combined mode.
    type Out: BodyMode;
}
impl JoinMode<Once> for Once {
    type Out = Once;
}
impl JoinMode<Replay> for Once {
    type Out = Replay;
}
impl JoinMode<Once> for Replay {
    type Out = Replay;
}
impl JoinMode<Replay> for Replay {
    type Out = Replay;
}

/// The error mode of two schemes combined: [`Error`](crate::Error) if either can fail.
pub trait JoinError<E: ErrorMode>: ErrorMode + Sized {
    /// The combined error mode.
    type Out: ErrorMode + From<Self> + From<E>;
}
impl JoinError<Infallible> for Infallible {
    type Out = Infallible;
}
impl JoinError<Error> for Infallible {
    type Out = Error;
}
impl JoinError<Infallible> for Error {
    type Out = Error;
}
impl JoinError<Error> for Error {
    type Out = Error;
}

impl From<Infallible> for Error {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

/// A body mode that fits where mode `M` is expected: [`Once`] fits both, [`Replay`] only
/// [`Replay`]. A [`BoxAuthenticator<Once>`](crate::BoxAuthenticator) or a
/// [`Router<Once>`](crate::route::Router) takes only schemes that never retry, so it can keep the
/// caller's body type.
pub trait FitsIn<M> {}
impl FitsIn<Once> for Once {}
impl FitsIn<Replay> for Once {}
impl FitsIn<Replay> for Replay {}
