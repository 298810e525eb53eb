//! CIDR peers: prefixes and their `except`s.

use ipnet::IpNet;

use super::Compiler;

impl Compiler<'_> {
    /// Parses a CIDR (or, with `bare_ip`, a single address); warns and truncates host bits.
    pub(super) fn cidr(&mut self, s: &str, bare_ip: bool, path: &str) -> Option<IpNet> {
        let net = match s.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) if bare_ip => IpNet::from(ip),
                Ok(_) => {
                    self.error(
                        path,
                        format!("{s:?} is an address, not a CIDR: write it as address/length"),
                    );
                    return None;
                }
                Err(_) => {
                    self.error(path, format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)"));
                    return None;
                }
            },
        };
        if net.trunc() != net {
            self.warn(
                path,
                format!("{s:?} has host bits set; it is taken as {}", net.trunc()),
            );
        }
        Some(net.trunc())
    }

    pub(super) fn excepts(
        &mut self,
        net: IpNet,
        except: Option<&[String]>,
        strict: bool,
        path: &str,
    ) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, e) in except.into_iter().flatten().enumerate() {
            let p = format!("{path}.except[{i}]");
            let Some(x) = self.cidr(e, false, &p) else {
                continue;
            };
            let inside = net.contains(&x) && (x.prefix_len() > net.prefix_len() || !strict);
            if !inside {
                self.error(
                    &p,
                    format!(
                        "{x} is not {} {net}",
                        if strict {
                            "a strict subset of"
                        } else {
                            "inside"
                        }
                    ),
                );
                continue;
            }
            out.push(x);
        }
        out
    }

    // ---- Cilium policies ---------------------------------------------------------------------
}
