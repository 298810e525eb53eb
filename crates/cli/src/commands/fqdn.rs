//! `ciliate fqdn cache list|clean`.

use ciliate_model::api::{FqdnCacheCleaned, FqdnCacheEntry};

use super::{Ctx, Outcome};
use crate::output::{self, or_none};

/// Prints the names learned from DNS answers.
pub async fn list(ctx: &Ctx, pattern: Option<&str>) -> anyhow::Result<Outcome> {
    let entries = ctx.client.fqdn_cache(pattern).await?;
    output::print(&output::render(ctx.format, &entries, |e| list_table(e))?)?;
    Ok(Outcome::Success)
}

/// Forgets names and prints how many went.
pub async fn clean(ctx: &Ctx, pattern: Option<&str>) -> anyhow::Result<Outcome> {
    let cleaned = ctx.client.fqdn_cache_clean(pattern).await?;
    output::print(&output::render(ctx.format, &cleaned, clean_text)?)?;
    Ok(Outcome::Success)
}

/// One row per name: NAME, IPS, TTL, TTL LEFT, ENDPOINTS.
pub fn list_table(entries: &[FqdnCacheEntry]) -> String {
    output::table(
        &["name", "ips", "ttl", "ttl left", "endpoints"],
        entries.iter().map(|e| {
            let ips = e
                .ips
                .iter()
                .map(|ip| {
                    if e.zombies.contains(ip) {
                        format!("{ip}(zombie)")
                    } else {
                        ip.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let endpoints = e
                .endpoints
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",");
            vec![
                e.name.clone(),
                or_none(ips),
                format!("{}s", e.ttl),
                format!("{}s", e.ttl_left),
                or_none(endpoints),
            ]
        }),
    )
}

fn clean_text(c: &FqdnCacheCleaned) -> String {
    format!(
        "{} name(s), {} entr{} forgotten\n",
        c.names,
        c.entries,
        if c.entries == 1 { "y" } else { "ies" }
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::output::{render, Format};

    fn entry() -> FqdnCacheEntry {
        FqdnCacheEntry {
            name: "api.example.com.".into(),
            ips: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            ttl_left: 3590,
            ttl: 30,
            endpoints: vec![7, 9],
            zombies: vec!["192.0.2.2".parse().unwrap()],
        }
    }

    #[test]
    fn list_has_the_columns_and_values() {
        let text = list_table(&[entry()]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["NAME", "IPS", "TTL", "TTL", "LEFT", "ENDPOINTS"]);
        assert_eq!(
            rows[1],
            [
                "api.example.com.",
                "192.0.2.1,192.0.2.2(zombie)",
                "30s",
                "3590s",
                "7,9"
            ]
        );
    }

    #[test]
    fn json_round_trips_and_clean_says_what_went() {
        let json = render(Format::Json, &vec![entry()], |e| list_table(e)).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<FqdnCacheEntry>>(&json).unwrap(),
            vec![entry()]
        );
        assert_eq!(
            clean_text(&FqdnCacheCleaned {
                names: 2,
                entries: 3
            }),
            "2 name(s), 3 entries forgotten\n"
        );
    }
}
