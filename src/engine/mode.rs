//! The engine's compile-time choices: the body mode ([`Once`], [`Replay`], [`Flow`]) and the
//! error mode ([`Infallible`], [`Error`]) of a scheme, and how they combine.

use std::convert::Infallible;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};

use crate::engine::body::{ReplayBody, ResponseBody};
use crate::engine::error::{BoxError, Error};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Once {}
    impl Sealed for super::Replay {}
    impl Sealed for super::Flow {}
    impl Sealed for std::convert::Infallible {}
    impl Sealed for crate::Error {}
}

/// Chooses the request body type the engine gives the wrapped service, and the response body
/// type the caller gets back. Implemented by [`Once`], [`Replay`] and [`Flow`] only.
///
/// | mode | the wrapped service receives | the caller gets | the scheme may |
/// |---|---|---|---|
/// | [`Once`] | the caller's body `B` | the wrapped service's body `R` | add credentials, observe responses |
/// | [`Replay`] | [`ReplayBody<B>`] | `R` | and ask for a retry |
/// | [`Flow`] | [`ReplayBody<B>`] | [`ResponseBody<R>`] | and read response bodies, send requests of its own |
pub trait BodyMode: sealed::Sealed + FitsIn<Flow> + Send + Sync + 'static {
    /// The body type the wrapped service receives for a caller's body `B`.
    type Body<B>;
    /// The body type the caller receives for the wrapped service's response body `R`.
    type ResBody<R>;
    /// Whether schemes of this mode may retry.
    const REPLAY: bool;
    /// Whether schemes of this mode may read response bodies and send requests of their own.
    const FLOW: bool;
    /// The caller's response, for a response of the wrapped service.
    fn response<R>(res: Response<R>) -> Response<Self::ResBody<R>>;
    /// The caller's response from a buffered body (and what was not read of it). The engine
    /// buffers response bodies only for [`Flow`] (it checks [`FLOW`](BodyMode::FLOW) first);
    /// the other modes cannot carry one and are never asked.
    fn buffered<R>(
        parts: http::response::Parts,
        data: Bytes,
        trailers: Option<HeaderMap>,
        rest: Option<std::pin::Pin<Box<R>>>,
        error: Option<BoxError>,
    ) -> Response<Self::ResBody<R>>;
    /// A scheme's own request as the wrapped service takes it, if this mode sends them.
    fn own<B>(req: Request<Bytes>) -> Option<Request<Self::Body<B>>>;
    /// Wraps the caller's body for the first exchange; returns the handle that can replay it.
    fn first<B>(body: B, limit: usize) -> (Self::Body<B>, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static;
    /// A body for another exchange, if this mode replays.
    fn again<B>(replay: &ReplayBody<B>) -> Option<Self::Body<B>>;
    /// The body a scheme put in place of the caller's
    /// ([`AuthRequest::replace_body`](crate::AuthRequest::replace_body)), if this mode can carry
    /// one (the replaying modes).
    fn replaced<B>(bytes: Bytes) -> Option<Self::Body<B>>;
}

/// [`BodyMode`] of schemes that never retry: the body passes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Once;

/// [`BodyMode`] of schemes that may retry: the body is wrapped in a [`ReplayBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay;

/// [`BodyMode`] of schemes with httpx-style flows: they may retry, read a response body
/// ([`Action::ReadBody`](crate::Action::ReadBody)) and send a request of their own through the
/// wrapped service before the caller's is sent again
/// ([`Action::SendOwn`](crate::Action::SendOwn)). The request body is a [`ReplayBody`]; the
/// caller's response body is a [`ResponseBody`], which holds the bytes a scheme read and
/// whatever it did not.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow;

/// The response side of the modes that do not run flows: the caller gets the wrapped service's
/// response as it is, and no request of a scheme's own is sent.
macro_rules! no_flow {
    () => {
        type ResBody<R> = R;
        const FLOW: bool = false;
        #[inline]
        fn response<R>(res: Response<R>) -> Response<R> {
            res
        }
        fn buffered<R>(
            _: http::response::Parts,
            _: Bytes,
            _: Option<HeaderMap>,
            _: Option<std::pin::Pin<Box<R>>>,
            _: Option<BoxError>,
        ) -> Response<R> {
            unreachable!("the engine buffers response bodies for Flow schemes only (BodyMode::FLOW)")
        }
        fn own<B>(_: Request<Bytes>) -> Option<Request<Self::Body<B>>> {
            None
        }
    };
}

impl BodyMode for Once {
    type Body<B> = B;
    const REPLAY: bool = false;
    no_flow!();
    fn first<B>(body: B, _limit: usize) -> (B, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static,
    {
        (body, None)
    }
    fn again<B>(_replay: &ReplayBody<B>) -> Option<B> {
        None
    }
    fn replaced<B>(_: Bytes) -> Option<B> {
        None
    }
}

impl BodyMode for Replay {
    type Body<B> = ReplayBody<B>;
    const REPLAY: bool = true;
    no_flow!();
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
    fn replaced<B>(bytes: Bytes) -> Option<ReplayBody<B>> {
        Some(ReplayBody::from_bytes(bytes))
    }
}

impl BodyMode for Flow {
    type Body<B> = ReplayBody<B>;
    type ResBody<R> = ResponseBody<R>;
    const REPLAY: bool = true;
    const FLOW: bool = true;
    #[inline]
    fn response<R>(res: Response<R>) -> Response<ResponseBody<R>> {
        res.map(ResponseBody::new)
    }
    fn buffered<R>(
        parts: http::response::Parts,
        data: Bytes,
        trailers: Option<HeaderMap>,
        rest: Option<std::pin::Pin<Box<R>>>,
        error: Option<BoxError>,
    ) -> Response<ResponseBody<R>> {
        Response::from_parts(parts, ResponseBody::buffered(data, trailers, rest, error))
    }
    fn own<B>(req: Request<Bytes>) -> Option<Request<ReplayBody<B>>> {
        Some(req.map(ReplayBody::from_bytes))
    }
    fn first<B>(body: B, limit: usize) -> (ReplayBody<B>, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static,
    {
        Replay::first(body, limit)
    }
    fn again<B>(replay: &ReplayBody<B>) -> Option<ReplayBody<B>> {
        Replay::again(replay)
    }
    fn replaced<B>(bytes: Bytes) -> Option<ReplayBody<B>> {
        Replay::replaced(bytes)
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

/// The mode of two schemes combined: the more capable of the two ([`Once`] < [`Replay`] <
/// [`Flow`]).
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
impl JoinMode<Flow> for Once {
    type Out = Flow;
}
impl JoinMode<Flow> for Replay {
    type Out = Flow;
}
impl JoinMode<Once> for Flow {
    type Out = Flow;
}
impl JoinMode<Replay> for Flow {
    type Out = Flow;
}
impl JoinMode<Flow> for Flow {
    type Out = Flow;
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

/// A body mode that fits where mode `M` is expected: [`Once`] fits all, [`Replay`] fits
/// [`Replay`] and [`Flow`], [`Flow`] only [`Flow`]. A [`BoxAuthenticator<Once>`](crate::BoxAuthenticator) or a
/// [`Router<Once>`](crate::route::Router) takes only schemes that never retry, so it can keep the
/// caller's body type.
pub trait FitsIn<M> {}
impl FitsIn<Once> for Once {}
impl FitsIn<Replay> for Once {}
impl FitsIn<Replay> for Replay {}
impl FitsIn<Flow> for Once {}
impl FitsIn<Flow> for Replay {}
impl FitsIn<Flow> for Flow {}
