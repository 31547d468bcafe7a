//! [`BoxAuthenticator`]: any scheme behind one type.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;

use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize};
use crate::engine::{BodyMode, ErrorMode, FitsIn, Flow, Once, Replay};
use crate::error::Error;

/// The [`Wait`](Authenticator::Wait) future of a [`BoxAuthenticator`].
pub type BoxWait = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'static>>;

/// Any scheme behind one type, so that schemes of different types can sit
/// side by side (one per origin in a [`Router`](crate::route::Router), in a `Vec`, in a map).
///
/// Erasing a scheme fixes the three associated types of [`Authenticator`] to their most general
/// choice:
///
/// | | erased | consequence |
/// |---|---|---|
/// | [`Mode`](Authenticator::Mode) | `M`: [`Replay`] by default, or [`Once`] | a `BoxAuthenticator<Once>` takes only schemes that never retry and keeps the caller's body type (in front of a tonic `Channel`); a `BoxAuthenticator` (of [`Replay`]) takes any scheme, and the engine wraps the body in a [`ReplayBody`](crate::ReplayBody) |
/// | [`Error`](Authenticator::Error) | [`Error`] | a scheme that cannot fail never returns one |
/// | [`State`](Authenticator::State) | [`BoxState`] | the scheme's own state, boxed on first use (no allocation for `()`) |
/// | [`Wait`](Authenticator::Wait) | [`BoxWait`] | boxed only when the scheme actually waits |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, Bearer, BoxAuthenticator, Digest};
/// # let client = tower::service_fn(|req: http::Request<tower_auth::ReplayBody<String>>| async move {
/// #     assert_eq!(req.headers()["authorization"], "Bearer t0ken");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// // Two schemes of different types, one type.
/// let schemes: Vec<BoxAuthenticator> =
///     vec![BoxAuthenticator::new(Bearer::new("t0ken")?), BoxAuthenticator::new(Digest::new("alice", "pw")?)];
/// let first = schemes.into_iter().next().unwrap();
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(first)).service(client);
/// svc.oneshot(http::Request::get("https://api.example/").body(String::new())?).await?;
/// # Ok(()) }
/// ```
///
/// `Debug` shows the type name of the erased scheme only, never its credentials.
///
/// Cloning is cheap and shares the scheme, with its state (Digest nonces, tokens), like the
/// services of one [`AuthLayer`](crate::AuthLayer) do.
///
/// Schemes that never retry, boxed as `BoxAuthenticator<Once>`, keep the caller's body type:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{ApiKey, AuthLayer, Bearer, BoxAuthenticator, Once};
/// // A client that accepts one body type only, as tonic's `Channel` does.
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.headers()["x-api-key"], "k1");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let schemes: Vec<BoxAuthenticator<Once>> =
///     vec![BoxAuthenticator::once(ApiKey::header("k1")?), BoxAuthenticator::once(Bearer::new("t0ken")?)];
/// let first = schemes.into_iter().next().unwrap();
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(first)).service(client);
/// svc.oneshot(http::Request::get("https://api.example/").body(String::new())?).await?;
/// # Ok(()) }
/// ```
pub struct BoxAuthenticator<M = Replay> {
    inner: Arc<dyn DynAuth>,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for BoxAuthenticator<M> {
    fn clone(&self) -> Self {
        BoxAuthenticator { inner: Arc::clone(&self.inner), mode: PhantomData }
    }
}

/// The per-request state of a [`BoxAuthenticator`]: the erased scheme's own
/// [`State`](Authenticator::State), created on first use.
#[derive(Default)]
pub struct BoxState(Option<Box<dyn Any + Send>>);

impl fmt::Debug for BoxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "BoxState(..)" } else { "BoxState(empty)" })
    }
}

impl BoxAuthenticator<Replay> {
    /// Erases any scheme that does not need a [`Flow`] (every built-in scheme). A
    /// `BoxAuthenticator` given here is taken as it is, not boxed twice.
    pub fn new<A>(scheme: A) -> Self
    where
        A: Authenticator,
        A::Mode: FitsIn<Replay>,
    {
        BoxAuthenticator::erase(scheme)
    }
}

impl BoxAuthenticator<Flow> {
    /// Erases any scheme, httpx-style flows included (the caller's response body becomes a
    /// [`ResponseBody`](crate::engine::ResponseBody)).
    pub fn flow<A: Authenticator>(scheme: A) -> Self {
        BoxAuthenticator::erase(scheme)
    }
}

impl BoxAuthenticator<Once> {
    /// Erases a scheme that never retries; the box keeps the caller's body type.
    pub fn once<A>(scheme: A) -> Self
    where
        A: Authenticator<Mode = Once>,
    {
        BoxAuthenticator::erase(scheme)
    }
}

impl<M: BodyMode> BoxAuthenticator<M> {
    /// Erases `scheme` into a box of mode `M`. A `BoxAuthenticator` given here is taken as it
    /// is, not boxed twice.
    pub(crate) fn erase<A>(scheme: A) -> Self
    where
        A: Authenticator,
        A::Mode: FitsIn<M>,
    {
        let mut slot = Some(scheme);
        let any = &mut slot as &mut dyn Any;
        if let Some(boxed) = any.downcast_mut::<Option<BoxAuthenticator<Replay>>>()
            && let Some(boxed) = boxed.take()
        {
            return BoxAuthenticator { inner: boxed.inner, mode: PhantomData };
        }
        if let Some(boxed) = any.downcast_mut::<Option<BoxAuthenticator<Flow>>>()
            && let Some(boxed) = boxed.take()
        {
            return BoxAuthenticator { inner: boxed.inner, mode: PhantomData };
        }
        if let Some(boxed) = any.downcast_mut::<Option<BoxAuthenticator<Once>>>()
            && let Some(boxed) = boxed.take()
        {
            return BoxAuthenticator { inner: boxed.inner, mode: PhantomData };
        }
        let inner: Arc<dyn DynAuth> = match slot {
            Some(scheme) => Arc::new(Erased(scheme)),
            None => Arc::new(Nothing),
        };
        BoxAuthenticator { inner, mode: PhantomData }
    }

    /// The same scheme in a box of a wider mode (a `BoxAuthenticator<Once>` as a
    /// `BoxAuthenticator<Replay>`), sharing its state.
    pub fn widen<M2: BodyMode>(self) -> BoxAuthenticator<M2>
    where
        M: FitsIn<M2>,
    {
        BoxAuthenticator { inner: self.inner, mode: PhantomData }
    }

    /// The same scheme under another mode tag, with no check: for the router, which checks
    /// `A::Mode: FitsIn<M>` when a route is added and keeps its routes in the widest box.
    pub(crate) fn retag<M2>(self) -> BoxAuthenticator<M2> {
        BoxAuthenticator { inner: self.inner, mode: PhantomData }
    }

    /// Whether the erased scheme looks at responses (it replays, or it observes them).
    pub(crate) fn sees_responses(&self) -> bool {
        self.inner.sees_responses()
    }

    /// Whether the erased scheme may ask for a retry (its mode is [`Replay`]).
    pub fn replays(&self) -> bool {
        self.inner.replays()
    }

    /// The type name of the erased scheme, for logs.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }
}

impl<M> fmt::Debug for BoxAuthenticator<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoxAuthenticator({})", self.inner.type_name())
    }
}

impl<M: BodyMode> Authenticator for BoxAuthenticator<M> {
    type Mode = M;
    type Error = Error;
    type State = BoxState;
    type Wait = BoxWait;

    #[inline]
    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut BoxState) -> Result<Authorize<BoxWait>, Error> {
        self.inner.authorize(req, state)
    }

    #[inline]
    fn applies_to(&self, req: &Parts) -> bool {
        self.inner.applies_to(req)
    }

    #[inline]
    fn observes_responses(&self) -> bool {
        self.inner.sees_responses()
    }

    #[inline]
    fn needs_request_head(&self) -> bool {
        self.inner.needs_request_head()
    }

    fn connection_bound(&self) -> bool {
        self.inner.connection_bound()
    }

    #[inline]
    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut BoxState) -> Action {
        self.inner.on_response(req, res, state)
    }

    fn on_response_body(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut BoxState) -> Action {
        self.inner.on_response_body(req, res, body, state)
    }

    fn own_request(&self, req: &Parts, state: &mut BoxState) -> Option<http::Request<Bytes>> {
        self.inner.own_request(req, state)
    }

    fn on_own_response(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut BoxState) -> Action {
        self.inner.on_own_response(req, res, body, state)
    }
}

/// The object-safe face of [`Authenticator`].
trait DynAuth: Send + Sync + 'static {
    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut BoxState) -> Result<Authorize<BoxWait>, Error>;
    fn applies_to(&self, req: &Parts) -> bool;
    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut BoxState) -> Action;
    fn on_response_body(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut BoxState) -> Action;
    fn own_request(&self, req: &Parts, state: &mut BoxState) -> Option<http::Request<Bytes>>;
    fn on_own_response(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut BoxState) -> Action;
    fn replays(&self) -> bool;
    fn sees_responses(&self) -> bool;
    fn needs_request_head(&self) -> bool;
    fn connection_bound(&self) -> bool;
    fn type_name(&self) -> &'static str;
}

struct Erased<A>(A);

impl<A: Authenticator> DynAuth for Erased<A> {
    #[inline]
    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut BoxState) -> Result<Authorize<BoxWait>, Error> {
        match self.0.authorize(req, typed::<A::State>(state)) {
            Ok(Authorize::Done) => Ok(Authorize::Done),
            Ok(Authorize::NeedBody) => Ok(Authorize::NeedBody),
            Ok(Authorize::Wait(wait)) => Ok(Authorize::Wait(Box::pin(async move { wait.await.map_err(into_error) }))),
            Err(err) => Err(into_error(err)),
        }
    }

    #[inline]
    fn applies_to(&self, req: &Parts) -> bool {
        self.0.applies_to(req)
    }

    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut BoxState) -> Action {
        // The engine shows responses to schemes that replay or observe; keep that promise for
        // the erased scheme, and never let a scheme that cannot replay ask for a retry.
        if !self.sees_responses() {
            return Action::Done;
        }
        let action = self.0.on_response(req, res, typed::<A::State>(state));
        if <A::Mode as BodyMode>::REPLAY { action } else { Action::Done }
    }

    fn on_response_body(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut BoxState) -> Action {
        self.0.on_response_body(req, res, body, typed::<A::State>(state))
    }

    fn own_request(&self, req: &Parts, state: &mut BoxState) -> Option<http::Request<Bytes>> {
        self.0.own_request(req, typed::<A::State>(state))
    }

    fn on_own_response(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut BoxState) -> Action {
        self.0.on_own_response(req, res, body, typed::<A::State>(state))
    }

    fn replays(&self) -> bool {
        <A::Mode as BodyMode>::REPLAY
    }

    fn sees_responses(&self) -> bool {
        <A::Mode as BodyMode>::REPLAY || self.0.observes_responses()
    }

    fn needs_request_head(&self) -> bool {
        self.0.needs_request_head()
    }

    fn connection_bound(&self) -> bool {
        self.0.connection_bound()
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<A>()
    }
}

/// Stands in for a scheme that could not be taken out of its slot (never happens: the slot is
/// emptied only when it held a box). Adds nothing, observes nothing.
struct Nothing;

impl DynAuth for Nothing {
    fn authorize(&self, _: &mut AuthRequest<'_>, _: &mut BoxState) -> Result<Authorize<BoxWait>, Error> {
        Ok(Authorize::Done)
    }
    fn applies_to(&self, _: &Parts) -> bool {
        false
    }
    fn on_response(&self, _: &Parts, _: &http::response::Parts, _: &mut BoxState) -> Action {
        Action::Done
    }
    fn on_response_body(&self, _: &Parts, _: &http::response::Parts, _: &Bytes, _: &mut BoxState) -> Action {
        Action::Done
    }
    fn own_request(&self, _: &Parts, _: &mut BoxState) -> Option<http::Request<Bytes>> {
        None
    }
    fn on_own_response(&self, _: &Parts, _: &http::response::Parts, _: &Bytes, _: &mut BoxState) -> Action {
        Action::Done
    }
    fn replays(&self) -> bool {
        false
    }
    fn sees_responses(&self) -> bool {
        false
    }
    fn needs_request_head(&self) -> bool {
        false
    }
    fn connection_bound(&self) -> bool {
        false
    }
    fn type_name(&self) -> &'static str {
        "nothing"
    }
}

/// The erased state as the scheme's own type, created on first use. A `State` of `()` (every
/// static scheme) is zero-sized, so boxing it does not allocate.
fn typed<S: Default + Send + 'static>(state: &mut BoxState) -> &mut S {
    let slot = state.0.get_or_insert_with(|| Box::new(S::default()));
    if !slot.is::<S>() {
        // The state of another scheme (a state reused across schemes): start afresh.
        *slot = Box::new(S::default());
    }
    match slot.downcast_mut::<S>() {
        Some(state) => state,
        None => unreachable!("the slot holds an S, set just above"),
    }
}

/// A scheme's error as an [`Error`]. [`ErrorMode`] is implemented by [`Error`] and by
/// [`Infallible`](std::convert::Infallible) only, which has no values, so the first branch is
/// the only one ever taken.
fn into_error<E: ErrorMode>(err: E) -> Error {
    let mut slot = Some(err);
    if let Some(err) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Error>>()
        && let Some(err) = err.take()
    {
        return err;
    }
    Error::scheme(format!("{slot:?}"))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::authenticator::{NoWait, Once};
    use crate::engine::ReplayBody;
    use crate::{AuthLayer, Basic};

    struct Counting(Arc<AtomicU32>);

    impl Authenticator for Counting {
        type Mode = Replay;
        type Error = Infallible;
        type State = u32;
        type Wait = NoWait<Infallible>;

        fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut u32) -> Result<Authorize<Self::Wait>, Infallible> {
            req.headers_mut().insert("x-try", http::HeaderValue::from(*state));
            Ok(Authorize::Done)
        }

        fn on_response(&self, _: &Parts, res: &http::response::Parts, state: &mut u32) -> Action {
            self.0.fetch_add(1, Ordering::SeqCst);
            if res.status == 401 && *state == 0 {
                *state += 1;
                Action::Retry
            } else {
                Action::Done
            }
        }
    }

    struct Failing;

    impl Authenticator for Failing {
        type Mode = Once;
        type Error = Error;
        type State = ();
        type Wait = NoWait<Error>;

        fn authorize(&self, _: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Error> {
            Err(Error::scheme("no token"))
        }
    }

    struct Waiting(Arc<AtomicU32>);

    impl Authenticator for Waiting {
        type Mode = Once;
        type Error = Infallible;
        type State = bool;
        type Wait = NoWait<Infallible>;

        fn authorize(&self, req: &mut AuthRequest<'_>, waited: &mut bool) -> Result<Authorize<Self::Wait>, Infallible> {
            if !*waited {
                *waited = true;
                self.0.fetch_add(1, Ordering::SeqCst);
                return Ok(Authorize::Wait(std::future::ready(Ok(()))));
            }
            req.headers_mut().insert("x-ready", http::HeaderValue::from_static("yes"));
            Ok(Authorize::Done)
        }
    }

    fn echo_status() -> impl tower::Service<
        http::Request<ReplayBody<String>>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|req: http::Request<ReplayBody<String>>| async move {
            let tried = req.headers().get("x-try").map(|v| v.to_str().unwrap().to_owned());
            let status = if tried.as_deref() == Some("0") { 401 } else { 200 };
            let mut res = http::Response::new(format!("{tried:?} {:?}", req.headers().get("x-ready")));
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        })
    }

    #[tokio::test]
    async fn replaying_scheme_retries_through_the_box() {
        use tower::ServiceExt;
        let seen = Arc::new(AtomicU32::new(0));
        let layer = AuthLayer::new(BoxAuthenticator::new(Counting(seen.clone())));
        let svc = tower::ServiceBuilder::new().layer(layer).service(echo_status());
        let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.body().starts_with("Some(\"1\")"), "{}", res.body());
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn static_scheme_never_retries_and_errors_and_waits_pass_through() {
        use tower::ServiceExt;
        let basic = BoxAuthenticator::new(Basic::new("u", "p").unwrap());
        assert!(!basic.replays());
        assert_eq!(format!("{basic:?}"), "BoxAuthenticator(tower_auth::basic::Basic)");
        let svc = tower::ServiceBuilder::new().layer(AuthLayer::new(basic)).service(tower::service_fn(
            |req: http::Request<ReplayBody<String>>| async move {
                assert_eq!(req.headers()["authorization"], "Basic dTpw");
                let mut res = http::Response::new(String::new());
                *res.status_mut() = http::StatusCode::UNAUTHORIZED;
                Ok::<_, Infallible>(res)
            },
        ));
        // A 401 goes back to the caller: Basic does not answer challenges.
        assert_eq!(svc.oneshot(http::Request::new(String::new())).await.unwrap().status(), 401);

        let failing = AuthLayer::new(BoxAuthenticator::new(Failing));
        let err = tower::ServiceBuilder::new()
            .layer(failing)
            .service(echo_status())
            .oneshot(http::Request::new(String::new()))
            .await
            .unwrap_err();
        assert!(err.is_scheme(), "{err:?}");

        let waits = Arc::new(AtomicU32::new(0));
        let res = tower::ServiceBuilder::new()
            .layer(AuthLayer::new(BoxAuthenticator::new(Waiting(waits.clone()))))
            .service(echo_status())
            .oneshot(http::Request::new(String::new()))
            .await
            .unwrap();
        assert!(res.body().ends_with("Some(\"yes\")"), "{}", res.body());
        assert_eq!(waits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn boxing_a_box_does_not_nest() {
        let once = BoxAuthenticator::new(Basic::new("u", "p").unwrap());
        let twice = BoxAuthenticator::new(once);
        assert_eq!(twice.type_name(), "tower_auth::basic::Basic");
    }

    #[test]
    fn unit_state_does_not_allocate_and_foreign_state_is_replaced() {
        let mut state = BoxState::default();
        assert_eq!(format!("{state:?}"), "BoxState(empty)");
        *typed::<u32>(&mut state) = 7;
        assert_eq!(*typed::<u32>(&mut state), 7);
        assert_eq!(*typed::<u64>(&mut state), 0);
        assert_eq!(format!("{state:?}"), "BoxState(..)");
    }

    #[test]
    fn errors_convert() {
        let err = into_error(Error::scheme("x"));
        assert!(err.is_scheme());
    }
}
