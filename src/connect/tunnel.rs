//! The `CONNECT` exchange, hand-written over hyper's HTTP/1.1 client connection because
//! hyper-util's `Tunnel` cannot answer a `407` (see the [module documentation](super)).
//!
//! One loop: build the `CONNECT host:port` head, let the proxy scheme
//! [`authorize`](crate::Authenticator::authorize) it, send it, show a `407` to
//! [`on_response`](crate::Authenticator::on_response), and on
//! [`Action::Retry`](crate::Action::Retry) go again, on the same connection if the proxy kept
//! it open, else on a new one. At most [`MAX_EXCHANGES`](crate::MAX_EXCHANGES) `CONNECT`s. A
//! [connection-bound](crate::Authenticator::connection_bound) scheme (NTLM, Negotiate) runs all
//! its legs on the first connection: if the proxy closes it mid-handshake, the tunnel fails.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::upgrade::Upgraded;

use super::error::{Kind, ProxyError};
use super::{Io, Proxy, ProxyConnector};
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize, BodyView};
use crate::challenge;

/// The most bytes of a `407` body read to keep the connection for the next `CONNECT`.
const DRAIN_LIMIT: usize = 64 * 1024;

/// `host:port` of a target URI (port 443 or 80 by scheme when absent).
pub(super) fn authority(dst: &Uri) -> String {
    let host = dst.host().unwrap_or("");
    let default = if dst.scheme_str() == Some("http") { 80 } else { 443 };
    format!("{host}:{}", dst.port_u16().unwrap_or(default))
}

async fn handshake(io: Io, name: &str, target: &str) -> Result<SendRequest<Empty<Bytes>>, ProxyError> {
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| ProxyError::new(Kind::Closed, name, target, "HTTP handshake failed").with_source(e))?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "proxy connection ended with an error");
        }
    });
    Ok(sender)
}

/// Opens a tunnel to `target` through `proxy`, whose first connection is `io`.
pub(super) async fn connect(
    connector: &mut ProxyConnector,
    proxy: &Proxy,
    target: &str,
    io: Io,
) -> Result<Upgraded, ProxyError> {
    let name = proxy.to_string();
    let err = |kind: Kind, detail: &str| ProxyError::new(kind, &name, target, detail);
    let head = Request::builder()
        .method(Method::CONNECT)
        .uri(target)
        .version(Version::HTTP_11)
        .header(HOST, target)
        .extension(super::ViaProxy::new(proxy))
        .body(())
        .map_err(|e| err(Kind::Protocol, "invalid target").with_source(e))?
        .into_parts()
        .0;
    let mut state = Default::default();
    let mut sender = Some(handshake(io, &name, target).await?);
    let mut exchanges = 0u32;
    loop {
        let mut parts = head.clone();
        if let Some(scheme) = &proxy.scheme {
            loop {
                match scheme.authorize(&mut AuthRequest::new(&mut parts, BodyView::Empty, exchanges), &mut state) {
                    Ok(Authorize::Done) => break,
                    Ok(Authorize::Wait(wait)) => {
                        wait.await.map_err(|e| err(Kind::Scheme, "").with_exchanges(exchanges).with_source(e))?;
                        parts = head.clone();
                    }
                    Ok(Authorize::NeedBody) => {
                        return Err(err(Kind::Scheme, "the scheme asked for a body (a CONNECT has none)"));
                    }
                    Err(e) => return Err(err(Kind::Scheme, "").with_exchanges(exchanges).with_source(e)),
                }
            }
        }
        let mut send = match sender.take() {
            Some(s) => s,
            None => handshake(connector.open_proxy(proxy, target).await?, &name, target).await?,
        };
        send.ready()
            .await
            .map_err(|e| err(Kind::Closed, "before the CONNECT").with_exchanges(exchanges).with_source(e))?;
        let sent_credentials = parts.headers.contains_key(PROXY_AUTHORIZATION);
        exchanges += 1;
        connector.exchanges.fetch_add(1, Ordering::Relaxed);
        let res = send.send_request(Request::from_parts(parts, Empty::new())).await.map_err(|e| {
            let kind = if e.is_parse() { Kind::Protocol } else { Kind::Closed };
            err(kind, "no answer to CONNECT").with_exchanges(exchanges).with_source(e)
        })?;
        let status = res.status();
        let (res_parts, body) = res.into_parts();
        let action = match &proxy.scheme {
            Some(scheme) => scheme.on_response(&head, &res_parts, &mut state),
            None => Action::Done,
        };
        if status.is_success() && action == Action::Retry {
            // The scheme refuses the success (Negotiate's final token did not verify: mutual
            // authentication failed); `authorize` says why. Never a tunnel to an unverified proxy.
            let mut parts = head.clone();
            let why = match proxy
                .scheme
                .as_ref()
                .map(|s| s.authorize(&mut AuthRequest::new(&mut parts, BodyView::Empty, exchanges), &mut state))
            {
                Some(Err(e)) => {
                    let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                    err(Kind::Protocol, &format!("the proxy's answer did not verify: {why}"))
                }
                _ => err(Kind::Protocol, "the scheme refused the proxy's answer"),
            };
            return Err(why.with_status(status).with_exchanges(exchanges));
        }
        if status.is_success() {
            let res = http::Response::from_parts(res_parts, body);
            return hyper::upgrade::on(res).await.map_err(|e| {
                err(Kind::Closed, "the tunnel did not open")
                    .with_status(status)
                    .with_exchanges(exchanges)
                    .with_source(e)
            });
        }
        if status != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err(err(Kind::Refused, "").with_status(status).with_exchanges(exchanges));
        }
        if action != Action::Retry || exchanges >= crate::MAX_EXCHANGES {
            let why = if proxy.scheme.is_none() {
                "the proxy wants credentials and none were given".to_owned()
            } else if exchanges >= crate::MAX_EXCHANGES && action == Action::Retry {
                format!("still 407 after {exchanges} CONNECTs: giving up (no retry loop)")
            } else if res_parts.headers.contains_key(PROXY_AUTHENTICATE)
                && challenge::parse_headers(&res_parts.headers, PROXY_AUTHENTICATE).is_empty()
            {
                "malformed Proxy-Authenticate: no challenge could be parsed".to_owned()
            } else if sent_credentials {
                "the proxy refused the credentials".to_owned()
            } else {
                "no Proxy-Authenticate challenge this scheme can answer".to_owned()
            };
            return Err(err(Kind::AuthRequired, &why).with_status(status).with_exchanges(exchanges));
        }
        // The same connection if the proxy keeps it (body read whole, no `Connection: close`).
        let close = res_parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))))
            || res_parts.version == Version::HTTP_10;
        if !close && Limited::new(body, DRAIN_LIMIT).collect().await.is_ok() && !send.is_closed() {
            sender = Some(send);
        } else if proxy.scheme.as_ref().is_some_and(|s| s.connection_bound()) {
            // NTLM and Negotiate authenticate the connection: the next leg on a new connection
            // could only fail (and start over, forever).
            return Err(err(
                Kind::Closed,
                "the proxy closed the connection in the middle of a connection-bound handshake (NTLM, Negotiate)",
            )
            .with_status(status)
            .with_exchanges(exchanges));
        } else {
            tracing::debug!(proxy = %name, "the proxy closed its connection after 407: answering on a new one");
        }
    }
}
