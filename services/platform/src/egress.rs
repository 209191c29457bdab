//! Where outgoing webhooks may connect. A webhook URL is anyone's input
//! (whoever may create a rule or a subscription), so without a check it
//! would reach the cloud metadata service (169.254.169.254), the pod's own
//! loopback or any private address behind the firewall (SSRF).
//!
//! Loopback, link-local, private, unique-local, shared (CGNAT), unspecified,
//! broadcast and multicast addresses are refused unless an allow-list names
//! them, including their IPv6 spellings (IPv4-mapped, NAT64, 6to4). The
//! check runs on every address a name resolves to, at connect time, and the
//! connection goes to the very address checked, so DNS rebinding cannot slip
//! past it. Redirects are never followed. A URL whose host is a literal
//! refused address is refused already when it is configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An address range, `ADDRESS/BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR such as 127.0.0.1/32 or fd00::/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        Ok(Self {
            network: canonical(network),
            bits,
        })
    }
}

/// Outgoing-webhook settings (the services that send or accept webhooks).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// Address ranges (CIDRs, comma-separated) webhooks may reach although
    /// they are loopback, link-local, private or unique-local, e.g.
    /// 127.0.0.1/32 for a receiver on this machine. Everything else in those
    /// ranges is refused.
    #[arg(long, env = "TRIBUTARY_WEBHOOK_ALLOW_CIDR", value_delimiter = ',')]
    pub webhook_allow_cidr: Vec<Cidr>,
}

/// The address policy for outgoing webhooks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Arc<Vec<Cidr>>,
}

/// A webhook URL taken apart (http only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host: String,
    pub port: u16,
    /// The path and query, at least `/`.
    pub path: String,
}

impl WebhookUrl {
    /// The Host header: the host as written, with the port when not 80.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl EgressPolicy {
    pub fn new(args: &EgressArgs) -> Self {
        Self {
            allow: Arc::new(args.webhook_allow_cidr.clone()),
        }
    }

    /// Whether a webhook may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|c| c.contains(ip))
    }

    /// Parses a webhook URL and refuses one whose host is a literal address
    /// this policy refuses. The reason is for the caller (no secret in it).
    pub fn check_url(&self, url: &str) -> Result<WebhookUrl, String> {
        let parsed = parse_http_url(url)?;
        if let Ok(ip) = parsed.host.parse::<IpAddr>()
            && !self.allows(ip)
        {
            return Err(format!(
                "{ip} is a loopback, link-local, private or otherwise internal address; \
                 webhooks may not reach it (allow it with --webhook-allow-cidr)"
            ));
        }
        Ok(parsed)
    }

    /// Connects to the webhook's host: resolves it, refuses every address
    /// the policy refuses, and connects to the first allowed one that
    /// answers, the very address checked.
    pub async fn connect(&self, url: &WebhookUrl) -> std::io::Result<tokio::net::TcpStream> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await?
            .collect();
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| self.allows(a.ip()));
        if allowed.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} resolves only to addresses webhooks may not reach ({})",
                    url.host,
                    refused
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut last = None;
        for addr in allowed {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
    }
}

/// A webhook's answer: its status code, and `Retry-After` in seconds when
/// it sent one (the HTTP-date form is not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
}

impl EgressPolicy {
    /// POSTs `body` to an `http://` webhook through this policy (HTTP/1.1,
    /// one connection per request, redirects not followed). `headers` go
    /// after Host, Content-Type, Content-Length; their names and values must
    /// not hold CR or LF (checked: refused as `InvalidInput`). An address the
    /// policy refuses is `PermissionDenied`, which a retry cannot change.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        user_agent: &str,
    ) -> std::io::Result<Answer> {
        use std::fmt::Write as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let url = parse_http_url(url)
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\nUser-Agent: {user_agent}\r\n",
            url.path,
            url.authority(),
            body.len()
        );
        for (name, value) in headers {
            if [name, value].iter().any(|t| t.contains(['\r', '\n'])) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("header {name:?} holds a line break"),
                ));
            }
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut stream = self.connect(&url).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        // The status line and headers; the body is not needed.
        let mut answer = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        parse_answer(&answer)
    }
}

fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let status = first
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {first:?}")))?;
    let retry_after = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok());
    Ok(Answer {
        status,
        retry_after,
    })
}

/// `http://host[:port][/path]`; https is not supported yet.
pub fn parse_http_url(url: &str) -> Result<WebhookUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("must be an http:// URL")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("must not carry user information (user:password@)".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("has an unclosed [ in its host")?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or("has junk after its IPv6 host")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err("has a host with characters a host name cannot have".into());
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("has an invalid port")?,
    };
    if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err("has spaces or control characters in its path".into());
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok(WebhookUrl {
        host: host.to_ascii_lowercase(),
        port,
        path,
    })
}

/// An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) counts as
/// that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Deprecated IPv4-compatible ::a.b.c.d (not :: and ::1).
    if s[..6] == [0, 0, 0, 0, 0, 0] && u32::from_be_bytes([o[12], o[13], o[14], o[15]]) > 1 {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

/// Not a public unicast address.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                // 100.64.0.0/10 shared address space (CGNAT; some clouds'
                // metadata services live there).
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 192.0.0.0/24 IETF protocol assignments.
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                // 198.18.0.0/15 benchmarking; 240.0.0.0/4 reserved.
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // 2001:db8::/32 documentation.
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&EgressArgs {
            webhook_allow_cidr: allow.iter().map(|c| c.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn refuses_internal_addresses_in_every_spelling() {
        let p = policy(&[]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://127.0.0.1:8080/",
            "http://127.1.2.3/",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://10.0.0.5/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.100.100.200/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::]/",
        ] {
            assert!(p.check_url(url).is_err(), "{url} should be refused");
        }
        for url in [
            "http://203.0.113.0.example/",
            "http://8.8.8.8/x",
            "http://[2606:4700::1111]/",
            "http://hooks.example:8080/a?b=c",
        ] {
            assert!(p.check_url(url).is_ok(), "{url} should pass");
        }
    }

    #[test]
    fn an_allow_list_opens_exactly_its_ranges() {
        let p = policy(&["127.0.0.2/32", "fd00::/8"]);
        assert!(p.allows("127.0.0.2".parse().unwrap()));
        assert!(p.allows("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!p.allows("127.0.0.1".parse().unwrap()));
        assert!(p.allows("fd12::1".parse().unwrap()));
        assert!(!p.allows("169.254.169.254".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn parses_webhook_urls() {
        let u = parse_http_url("http://Hooks.Example:8080/a/b?c=d").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hooks.example", 8080, "/a/b?c=d")
        );
        assert_eq!(u.authority(), "hooks.example:8080");
        let u = parse_http_url("http://[::1]:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/")
        );
        assert_eq!(u.authority(), "[::1]:9000");
        for bad in [
            "https://x/",
            "http://",
            "http://user:pw@x/",
            "http://x:0/",
            "http://x:99999/",
            "http://x y/",
            "http://x/\r\nHost: y",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn connect_refuses_names_that_resolve_inside() {
        let p = policy(&[]);
        let url = parse_http_url("http://localhost:9/").unwrap();
        let e = p.connect(&url).await.map(|_| ()).map_err(|e| e.kind());
        assert_eq!(e, Err(std::io::ErrorKind::PermissionDenied));
    }

    #[test]
    fn answers_are_read() {
        let a = parse_answer(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\n\r\n").unwrap();
        assert_eq!((a.status, a.retry_after), (429, Some(2)));
        let a = parse_answer(
            b"HTTP/1.0 204 No Content\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
        )
        .unwrap();
        assert_eq!((a.status, a.retry_after), (204, None));
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
