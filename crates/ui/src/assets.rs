//! The page, embedded in the binary: plain HTML, one ES module drawing SVG, and a stylesheet.
//! Nothing is fetched from anywhere else (the machines have no internet) and nothing is built.

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The page's script.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The page's styles.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
