//! What the NTLM and Kerberos tests share: one request through a connection-bound client
//! (`ntlm::WindowsAuth`), its body read whole.

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_auth::ntlm::{Error, WindowsAuth};

/// The client every test builds.
pub type Win = WindowsAuth<Full<Bytes>>;

/// Sends `method url` with `body`: the status, the headers and the body as text.
pub async fn send_full(
    client: &Win,
    method: &str,
    url: &str,
    body: &'static str,
) -> Result<(u16, HeaderMap, String), Error> {
    let req = Request::builder().method(method).uri(url).body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
    let res = client.clone().oneshot(req).await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok((parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned()))
}

/// [`send_full`] without the headers.
pub async fn send(client: &Win, method: &str, url: &str, body: &'static str) -> Result<(u16, String), Error> {
    send_full(client, method, url, body).await.map(|(status, _, body)| (status, body))
}
