//! Combining schemes: [`AllOf`] (every scheme adds its credentials) and [`FirstOf`] (the first
//! scheme that applies to the request is used, the others are not).
//!
//! The two differ on purpose. `requests_auth` gives `+` and `&` the same meaning; here:
//!
//! | combinator | credentials sent | challenges answered by | typical use |
//! |---|---|---|---|
//! | [`AllOf`] | both schemes' | either (a retry if either asks) | an API key *and* a bearer token |
//! | [`FirstOf`] | the first applicable scheme's only | that scheme | per-origin schemes, netrc as a fallback |
//!
//! A scheme says whether it applies to a request with
//! [`Authenticator::applies_to`] (static schemes always do).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::request::Parts;
use pin_project_lite::pin_project;

use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize};
use crate::engine::{JoinError, JoinMode};

mod boxed;

pub use boxed::{BoxAuthenticator, BoxState, BoxWait};

/// Both schemes add their credentials to every request.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AllOf, ApiKey, AuthLayer, Bearer};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.headers()["x-api-key"], "k1");
/// #     assert_eq!(req.headers()["authorization"], "Bearer t1");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let both = AllOf::new(ApiKey::header("k1")?, Bearer::new("t1")?);
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(both)).service(client);
/// svc.oneshot(http::Request::new(String::new())).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AllOf<A, B> {
    first: A,
    second: B,
}

impl<A, B> AllOf<A, B> {
    /// `first`'s credentials, then `second`'s.
    pub fn new(first: A, second: B) -> Self {
        AllOf { first, second }
    }
}

/// The first scheme that [applies](crate::Authenticator::applies_to) to a request is used;
/// if neither applies, the request goes out without credentials.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthRequest, Authenticator, Authorize, Basic, Bearer, FirstOf, NoWait, Once};
///
/// /// A bearer token only for hosts under `internal.example`.
/// struct Internal(Bearer);
/// impl Authenticator for Internal {
///     type Mode = Once;
///     type Error = Infallible;
///     type State = ();
///     type Wait = NoWait<Infallible>;
///     fn applies_to(&self, req: &http::request::Parts) -> bool {
///         req.uri.host().is_some_and(|h| h.ends_with(".internal.example"))
///     }
///     fn authorize(&self, req: &mut AuthRequest<'_>, s: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
///         self.0.authorize(req, s)
///     }
/// }
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     let expected = if req.uri().host() == Some("db.internal.example") { "Bearer t" } else { "Basic dTpw" };
/// #     assert_eq!(req.headers()["authorization"], expected);
/// #     Ok::<_, Infallible>(http::Response::new(String::new()))
/// # });
///
/// let auth = FirstOf::new(Internal(Bearer::new("t")?), Basic::new("u", "p")?);
/// let svc = ServiceBuilder::new().layer(tower_auth::AuthLayer::new(auth)).service(client);
/// svc.clone().oneshot(http::Request::get("https://db.internal.example/").body(String::new())?).await?;
/// svc.oneshot(http::Request::get("https://elsewhere.example/").body(String::new())?).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FirstOf<A, B> {
    first: A,
    second: B,
}

impl<A, B> FirstOf<A, B> {
    /// `first` where it applies, else `second` where it applies.
    pub fn new(first: A, second: B) -> Self {
        FirstOf { first, second }
    }
}

type JoinedError<A, B> = <<A as Authenticator>::Error as JoinError<<B as Authenticator>::Error>>::Out;

pin_project! {
    /// The wait future of a combination: one of its schemes' wait futures.
    pub struct EitherWait<L, R, E> {
        #[pin]
        inner: Either<L, R>,
        _error: PhantomData<fn() -> E>,
    }
}

pin_project! {
    #[project = EitherProj]
    enum Either<L, R> {
        First { #[pin] wait: L },
        Second { #[pin] wait: R },
    }
}

impl<L, R, E> fmt::Debug for EitherWait<L, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Either::First { .. } => "EitherWait::First",
            Either::Second { .. } => "EitherWait::Second",
        })
    }
}

impl<L, R, E, EL, ER> Future for EitherWait<L, R, E>
where
    L: Future<Output = Result<(), EL>>,
    R: Future<Output = Result<(), ER>>,
    E: From<EL> + From<ER>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project().inner.project() {
            EitherProj::First { wait } => ready!(wait.poll(cx)).map_err(E::from),
            EitherProj::Second { wait } => ready!(wait.poll(cx)).map_err(E::from),
        })
    }
}

fn first<L, R, E>(wait: L) -> EitherWait<L, R, E> {
    EitherWait { inner: Either::First { wait }, _error: PhantomData }
}

fn second<L, R, E>(wait: R) -> EitherWait<L, R, E> {
    EitherWait { inner: Either::Second { wait }, _error: PhantomData }
}

impl<A, B> Authenticator for AllOf<A, B>
where
    A: Authenticator,
    B: Authenticator,
    A::Mode: JoinMode<B::Mode>,
    A::Error: JoinError<B::Error>,
{
    type Mode = <A::Mode as JoinMode<B::Mode>>::Out;
    type Error = JoinedError<A, B>;
    type State = (A::State, B::State);
    type Wait = EitherWait<A::Wait, B::Wait, Self::Error>;

    fn applies_to(&self, req: &Parts) -> bool {
        self.first.applies_to(req) || self.second.applies_to(req)
    }

    fn authorize(
        &self,
        req: &mut AuthRequest<'_>,
        (sa, sb): &mut Self::State,
    ) -> Result<Authorize<Self::Wait>, Self::Error> {
        let a = self.first.authorize(req, sa).map_err(Self::Error::from)?;
        let b = self.second.authorize(req, sb).map_err(Self::Error::from)?;
        Ok(match (a, b) {
            (Authorize::Wait(w), _) => Authorize::Wait(first(w)),
            (_, Authorize::Wait(w)) => Authorize::Wait(second(w)),
            (Authorize::NeedBody, _) | (_, Authorize::NeedBody) => Authorize::NeedBody,
            (Authorize::Done, Authorize::Done) => Authorize::Done,
        })
    }

    fn on_response(&self, req: &Parts, res: &http::response::Parts, (sa, sb): &mut Self::State) -> Action {
        let a = self.first.on_response(req, res, sa);
        let b = self.second.on_response(req, res, sb);
        a.max(b)
    }

    fn on_response_body(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &bytes::Bytes,
        (sa, sb): &mut Self::State,
    ) -> Action {
        let a = self.first.on_response_body(req, res, body, sa);
        let b = self.second.on_response_body(req, res, body, sb);
        a.max(b)
    }

    fn own_request(&self, req: &Parts, (sa, sb): &mut Self::State) -> Option<http::Request<bytes::Bytes>> {
        self.first.own_request(req, sa).or_else(|| self.second.own_request(req, sb))
    }

    fn on_own_response(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &bytes::Bytes,
        (sa, sb): &mut Self::State,
    ) -> Action {
        let a = self.first.on_own_response(req, res, body, sa);
        let b = self.second.on_own_response(req, res, body, sb);
        a.max(b)
    }

    fn observes_responses(&self) -> bool {
        self.first.observes_responses() || self.second.observes_responses()
    }

    fn needs_request_head(&self) -> bool {
        self.first.needs_request_head() || self.second.needs_request_head()
    }
}

/// Which scheme of a [`FirstOf`] serves the request.
#[derive(Debug, Default)]
pub struct FirstOfState<SA, SB> {
    chosen: Option<bool>,
    first: SA,
    second: SB,
}

impl<A, B> Authenticator for FirstOf<A, B>
where
    A: Authenticator,
    B: Authenticator,
    A::Mode: JoinMode<B::Mode>,
    A::Error: JoinError<B::Error>,
{
    type Mode = <A::Mode as JoinMode<B::Mode>>::Out;
    type Error = JoinedError<A, B>;
    type State = FirstOfState<A::State, B::State>;
    type Wait = EitherWait<A::Wait, B::Wait, Self::Error>;

    fn applies_to(&self, req: &Parts) -> bool {
        self.first.applies_to(req) || self.second.applies_to(req)
    }

    fn authorize(
        &self,
        req: &mut AuthRequest<'_>,
        state: &mut Self::State,
    ) -> Result<Authorize<Self::Wait>, Self::Error> {
        let use_first = *state.chosen.get_or_insert_with(|| self.first.applies_to(req.parts()));
        if use_first {
            Ok(map_wait(self.first.authorize(req, &mut state.first).map_err(Self::Error::from)?, first))
        } else if self.second.applies_to(req.parts()) {
            Ok(map_wait(self.second.authorize(req, &mut state.second).map_err(Self::Error::from)?, second))
        } else {
            Ok(Authorize::Done)
        }
    }

    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut Self::State) -> Action {
        match state.chosen {
            Some(true) => self.first.on_response(req, res, &mut state.first),
            Some(false) if self.second.applies_to(req) => self.second.on_response(req, res, &mut state.second),
            _ => Action::Done,
        }
    }

    fn on_response_body(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &bytes::Bytes,
        state: &mut Self::State,
    ) -> Action {
        match state.chosen {
            Some(true) => self.first.on_response_body(req, res, body, &mut state.first),
            Some(false) => self.second.on_response_body(req, res, body, &mut state.second),
            None => Action::Done,
        }
    }

    fn own_request(&self, req: &Parts, state: &mut Self::State) -> Option<http::Request<bytes::Bytes>> {
        match state.chosen {
            Some(true) => self.first.own_request(req, &mut state.first),
            Some(false) => self.second.own_request(req, &mut state.second),
            None => None,
        }
    }

    fn on_own_response(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &bytes::Bytes,
        state: &mut Self::State,
    ) -> Action {
        match state.chosen {
            Some(true) => self.first.on_own_response(req, res, body, &mut state.first),
            Some(false) => self.second.on_own_response(req, res, body, &mut state.second),
            None => Action::Done,
        }
    }

    fn observes_responses(&self) -> bool {
        self.first.observes_responses() || self.second.observes_responses()
    }

    fn needs_request_head(&self) -> bool {
        self.first.needs_request_head() || self.second.needs_request_head()
    }
}

fn map_wait<W, V>(a: Authorize<W>, f: impl FnOnce(W) -> V) -> Authorize<V> {
    match a {
        Authorize::Done => Authorize::Done,
        Authorize::NeedBody => Authorize::NeedBody,
        Authorize::Wait(w) => Authorize::Wait(f(w)),
    }
}
