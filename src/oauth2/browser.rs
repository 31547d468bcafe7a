//! Opening the user's browser for interactive grants: the [`Browser`] trait, the system browser
//! (the `webbrowser` crate, which honours `BROWSER`), and what happens when none can be opened
//! (the URL is printed to stderr and the flow keeps waiting).

use std::fmt;

use crate::error::BoxError;

/// Shows the user an authorization URL. Replace it in tests (`testing`'s browser mock follows the
/// URL itself) or in applications with their own way of showing it.
pub trait Browser: Send + Sync + 'static {
    /// Opens `url`. An error is not fatal: the URL is then printed to stderr, and the flow keeps
    /// waiting for the user until its timeout.
    ///
    /// # Errors
    ///
    /// Why the URL could not be opened.
    fn open(&self, url: &str) -> Result<(), BoxError>;
}

/// The system's browser, through the `webbrowser` crate (feature `oauth2-browser`): the
/// `BROWSER` environment variable, else the platform's default. Without that feature, or where
/// no browser can be found, it prints the URL to stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemBrowser;

impl Browser for SystemBrowser {
    fn open(&self, url: &str) -> Result<(), BoxError> {
        #[cfg(feature = "oauth2-browser")]
        {
            webbrowser::open(url).map_err(|e| Box::new(e) as BoxError)
        }
        #[cfg(not(feature = "oauth2-browser"))]
        {
            let _ = url;
            Err("no browser support in this build (feature oauth2-browser)".into())
        }
    }
}

/// Prints the URL to stderr and opens nothing (for headless machines).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrintUrl;

impl Browser for PrintUrl {
    fn open(&self, url: &str) -> Result<(), BoxError> {
        eprintln!("Open this URL in a browser to authorise the application:\n{url}");
        Ok(())
    }
}

impl fmt::Debug for dyn Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Browser")
    }
}
